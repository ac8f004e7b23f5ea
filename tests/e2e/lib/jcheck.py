"""What the e2e scripts' Python checks of a JSON share: check() prints a FAIL
line and counts it, close() compares two floats relatively; the script exits
with finish(). Import after sys.path.insert(0, "<repo>/tests/e2e/lib")."""
import sys

failures = 0


def check(ok, msg):
    global failures
    if not ok:
        print("FAIL  " + msg)
        failures += 1


def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def finish():
    sys.exit(1 if failures else 0)
