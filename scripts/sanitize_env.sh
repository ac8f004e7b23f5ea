# Sourced by scripts/sanitize.sh and scripts/emu.sh: the sanitizer runtime's
# settings for tests built with -DEP_SANITIZE=ON. `ep_sanitize_env BUILD`
# writes BUILD/lsan-openmpi.supp and exports ASAN/LSAN/UBSAN_OPTIONS.
# Open MPI leaks inside itself at MPI_Finalize, so leaks whose stack passes
# through its libraries (libmpi, libopen-pal, libopen-rte, hwloc, pmix) are
# suppressed; nothing of ours is.
ep_sanitize_env() {
  local supp="$1/lsan-openmpi.supp"
  printf '%s\n' \
    "# Leaks inside Open MPI and the libraries it loads (written by" \
    "# scripts/sanitize_env.sh). Only third-party modules are named here." \
    "leak:libmpi.so" "leak:libopen-pal.so" "leak:libopen-rte.so" "leak:libhwloc.so" \
    "leak:libpmix.so" \
    "# PMIx's progress thread runs on libevent; PMIx unloads its plugins before" \
    "# the leak check, so their frames are unnamed and only libevent identifies it." \
    "leak:libevent_core" >"$supp"
  # fast_unwind_on_malloc=0: Open MPI and libc are built without frame
  # pointers; the slow unwinder sees through them, so the suppressions match.
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1
  # Keep Open MPI's components loaded so that their frames have names.
  export OMPI_MCA_mca_base_component_disable_dlclose=1
  export LSAN_OPTIONS=suppressions=$supp:print_suppressions=0
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
}
