// Writes the GPT-2 tokenizer's golden ids (JSON lines on stdout) with gpt-3-encoder's own encode():
//   node make_tokenizer_golden.mjs PACKAGE_DIR BATTERY_IN|--new-battery
// PACKAGE_DIR is the unpacked gpt-3-encoder 1.1.4 (make_tokenizer_golden.sh fetches it).
// BATTERY_IN is the previous golden (tokenizer_golden.jsonl): its texts are encoded again, so the
// battery stays what is committed. --new-battery builds the battery afresh from this machine's text
// (Debian's common-licenses, package changelogs and descriptions, X11's Compose table, the CLIP
// tests' multilingual names), hand-written cases and seeded random strings.
//
// Line 1 is a header; then one {"source", "text", "ids", "prefixes"} per text, where prefixes holds
// [k, decode(ids[0..k))] for a few k whose decoding cuts a character (gpt-3-encoder's decode, i.e.
// TextDecoder's U+FFFD per maximal invalid subpart).
//
// Left out of the battery, because JavaScript's regex differs from Python's `regex` module (which
// OpenAI's encoder.py and Hugging Face use, and which the C++ follows): texts with U+0085 (white space
// in Python, not in JS) or U+FEFF (white space in JS, not in Python); those have their own C++ tests.
// Node's \p{L}/\p{N} follow its ICU's Unicode version (17.0 in Node 20.20), the C++ utf8proc's (15.0 in
// Debian 12): a character assigned in between would make a text differ; none of the battery's does
// (check_tokenizer_golden.py and the C++ test would name it).
import { createRequire } from "node:module";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";

const [pkgDir, batteryArg] = process.argv.slice(2);
if (!pkgDir || !batteryArg) {
  console.error("usage: node make_tokenizer_golden.mjs PACKAGE_DIR BATTERY_IN|--new-battery");
  process.exit(2);
}
const require = createRequire(path.resolve(pkgDir, "index.js"));
const { encode, decode } = require(path.resolve(pkgDir, "index.js"));

const JS_PYTHON_DIFFER = /[\u0085\uFEFF]/u;
const MAX_CHARS = 1500;

// ---- a seeded generator, so that --new-battery gives the same battery from the same files --------
let seed = 0x9e3779b9;
function rand() {  // mulberry32
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (xs) => xs[Math.floor(rand() * xs.length)];

// ---- hand-written cases ------------------------------------------------------------------------
const HAND = {
  glue: [
    // CoLA-like acceptability sentences
    "The sailors rode the breeze clear of the rocks.",
    "The more you eat, the fatter you get.",
    "John seems that Mary left.",
    "Who did you say that left?",
    "Bill's book about himself was criticized by Mary's friends.",
    "The children are fond that they have ice cream.",
    "I wonder whether to go or not.",
    "Harriet alternated folk songs and pop songs together.",
    // SST-2-like phrases (lower-cased, spaced punctuation as in the corpus)
    "it 's a charming and often affecting journey . ",
    "unflinchingly bleak and desperate ",
    "the acting , costumes , music , cinematography and sound are all astounding given the production 's austere locales . ",
    "it 's slow -- very , very slow . ",
    "a sometimes tedious film . ",
    "you wo n't like roger , but you will quickly recognize him . ",
    "if you 're not a fan , it might be like trying to eat brussels sprouts . ",
    "an absorbing , slice-of-depression life that touches nerves and rings true . ",
    // MRPC / QQP / QNLI / RTE / MNLI-like pairs' halves
    "Amrozi accused his brother, whom he called \"the witness\", of deliberately distorting his evidence.",
    "Referring to him as only \"the witness\", Amrozi accused his brother of deliberately distorting his evidence.",
    "Yucaipa owned Dominick's before selling the chain to Safeway in 1998 for $2.5 billion.",
    "The stock rose $2.11, or about 11 percent, to close Friday at $21.51 on the New York Stock Exchange.",
    "Revenue in the first quarter of the year dropped 15 percent from the same period a year earlier.",
    "How do I read and find my YouTube comments?",
    "What's the best way to learn C++ in 2024?",
    "Why are so many Quora users posting questions that are readily answered on Google?",
    "Is it possible to become a millionaire by the age of 25? If so, how?",
    "When did the third Digimon series begin?",
    "Unlike the two seasons before it and most of the seasons that followed, Digimon Tamers takes a darker and more realistic approach to its story.",
    "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to the Christopher Reeve Foundation.",
    "Christopher Reeve had an accident.",
    "Conceptually cream skimming has two basic dimensions - product and geography.",
    "Product and geography are what make cream skimming work. ",
    "you know during the season and i guess at at your level uh you lose them to the next level if if they decide to recall the the parent team the Braves decide to call to recall a guy from triple A then a double A guy goes up to replace him and a single A guy goes up to replace him",
    "The new rights are nice enough",
    "Everyone really likes the newest benefits ",
    "At the other end of Pennsylvania Avenue, people began to line up for a White House tour.",
    "People formed a line at the end of Pennsylvania Avenue.",
  ],
  contractions: [
    "I'm sure you'll see it's fine; they've said we'd go, and you're right, isn't it?",
    "I'M SURE YOU'LL SEE IT'S FINE; THEY'VE SAID WE'D GO, AND YOU'RE RIGHT, ISN'T IT?",
    "She'S here. He'LL come. We'Re late. They'Ve gone. I'M off. You'D know. Don'T.",
    "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "'sup 'tis 'twas 'em 'round 'cause",
    "rock 'n' roll, ma'am, o'clock, y'all, ne'er-do-well",
    "It’s a curly apostrophe: don’t, we’ll, I’m.",
    "''s '''s ''' 's's",
    "the dog's bone, the dogs' bones, James's car",
    "'",
    "'s",
    "x'",
    " 's",
    "a 're b 've c",
  ],
  numbers: [
    "3.14159 2.71828 1,000,000 1.000.000,00 0.5% -42 +7 1e-10 6.022e23",
    "Call 555-0123 or +1 (800) 555-0199 before 11:59 pm on 2024-02-29.",
    "Version 2.10.3-rc1 fixes CVE-2023-12345; see RFC 2616, section 14.9.",
    "1st 2nd 3rd 4th 21st 100th 1990s '90s",
    "x² + y² = z², ½ + ¼ = ¾, 10⁻³, H₂O, Ⅻ, ①②③, ٣٤٥, ०१२, 〇",
    "12345678901234567890123456789012345678901234567890",
    "$5 €10 £20 ¥30 ₹40 ₿0.001",
    "0x1F 0o17 0b1010 1_000_000",
  ],
  whitespace: [
    "",
    " ",
    "  ",
    "   leading spaces",
    "trailing spaces   ",
    "  both ends  ",
    "many     spaces    between     words",
    "tab\tseparated\tvalues\t",
    "\ttab first",
    "line one\nline two\n",
    "\n\nblank lines\n\n\nbetween\n",
    "windows\r\nline\r\nendings\r\n",
    "mixed \t \n \r\n  whitespace \u000b\u000c runs",
    "no-break\u00a0space and ideographic\u3000space",
    "en\u2002em\u2003thin\u2009hair\u200awide",
    "line\u2028separator and paragraph\u2029separator",
    "narrow\u202fno-break and math\u205fspace, ogham\u1680space",
    " \u00a0 \u00a0mixed non-breaking",
    "a\u00a0\u00a0b",
    "word \u3000\u3000 word",
    "   \n   ",
    "\t",
    "\n",
    " \n",
    "\n ",
    "x \ty",
    "x\t y",
    "end with newline\n",
  ],
  punctuation: [
    "Hello, world! How are you?? I'm fine... really!!!",
    "(parentheses) [brackets] {braces} <angles>",
    "\"double\" 'single' `back` «guillemets» „low“ “curly” ‘curly’",
    "e-mail: someone@example.org; web: https://example.org/path?q=1&r=2#frag",
    "C:\\Program Files\\x86\\app.exe --flag=value -v -- end",
    "#hashtag @mention $var %percent ^caret &amp *star _under_ =eq +plus |pipe ~tilde",
    "....  ----  ____  ====  ****  !!!!  ????  ,,,,  ;;;;  ::::",
    "a--b—c–d…e•f·g",
    "<|endoftext|> is GPT-2's end-of-text token, and <|endoftext|><|endoftext|> twice.",
    "< |endoftext| > <|endoftext <|ENDOFTEXT|>",
    " ,,, ,,,, ,,,,,, ,., ,'; ',' \",\"",
    "::1 :: 127.0.0.1 ... ,, ,,, .,.,.,",
    "¡Hola! ¿Qué tal? «Ça va?» — 「こんにちは」『世界』【注意】",
    "{\"key\": [1, 2, {\"nested\": null}], \"ok\": true}",
    "def f(x):\n    return x ** 2  # square\n",
    "if (a && b || !c) { x += 1; } else { y -= 2; }",
  ],
  unicode: [
    "Zoë Saldaña and Beyoncé visited Hôtel-Dieu in Besançon.",
    "naïve café résumé façade coöperate",
    "Straße, Größe, Maß, weiß",
    "Ελληνικά: Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "Русский: Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "العربية: نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر",
    "עברית: דג סקרן שט בים מאוכזב ולפתע מצא חברה",
    "हिन्दी: ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले विष्णुवतार भगवान श्रीराम",
    "ไทย: เป็นมนุษย์สุดประเสริฐเลิศคุณค่า",
    "中文：我能吞下玻璃而不伤身体。",
    "日本語：いろはにほへと　ちりぬるを　わかよたれそ",
    "한국어: 다람쥐 헌 쳇바퀴에 타고파",
    "Tiếng Việt: Tôi có thể ăn thủy tinh mà không hại gì.",
    "emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ ✔︎ 🏳️‍🌈",
    "combining: e\u0301 a\u0308 n\u0303 o\u0302\u0323 Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f",
    "zero width: a\u200bb c\u200cd e\u200df \u2060g soft\u00adhyphen",
    "math: ∀x∈ℝ: x²≥0; ∑ᵢ aᵢ ≤ ∏ⱼ bⱼ; √2 ≈ 1.414; ∞ ≠ ∅",
    "fullwidth: ＡＢＣ１２３！？ halfwidth: ｱｲｳ",
    "astral letters: 𝐀𝐁𝐂 𝔄𝔅 𐌰𐌱𐌲 𠀀𠀁 𝟎𝟏𝟐",
    "titlecase ǅ ǈ ǋ, modifiers ʰʲʷ ˈstress, iteration 々ゝ",
    "private \ue000\uf8ff unassigned \u0378 control \u0001\u001f\u007f",
    "nul \u0000 inside",
    "Ω≈ç√∫˜µ≤≥÷ åß∂ƒ©˙∆˚¬…æ œ∑´®†¥¨ˆøπ“‘",
    "Ⓐⓑⓒ ⅠⅡⅢ ↉ ⁰¹²³",
  ],
};

// ---- text from this machine --------------------------------------------------------------------
function readText(file) {
  const raw = fs.readFileSync(file);
  return (file.endsWith(".gz") ? zlib.gunzipSync(raw) : raw).toString("utf8");
}

function sentences(text) {
  return text
    .replace(/\s+/gu, " ")
    .split(/(?<=[.;:!?])\s+(?=[A-Z(“"])/u)
    .map((s) => s.trim())
    .filter((s) => s.length >= 20 && s.length <= 400);
}

function every(xs, n) {  // about n items spread evenly over xs
  if (xs.length <= n) return xs;
  const out = [];
  for (let k = 0; k < n; ++k) out.push(xs[Math.floor((k * xs.length) / n)]);
  return out;
}

function fromLicenses(n) {
  const dir = "/usr/share/common-licenses";
  const all = [];
  for (const f of fs.readdirSync(dir).sort()) {
    const p = path.join(dir, f);
    if (fs.lstatSync(p).isFile()) all.push(...sentences(readText(p)));
  }
  return every([...new Set(all)], n);
}

function changelogs() {
  const dir = "/usr/share/doc";
  const files = [];
  for (const pkg of fs.readdirSync(dir).sort()) {
    const p = path.join(dir, pkg, "changelog.Debian.gz");
    if (fs.existsSync(p) && fs.lstatSync(p).isFile()) files.push(p);
  }
  return files;
}

function fromChangelogLines(files, n) {
  const lines = [];
  for (const f of files) {
    for (const line of readText(f).split("\n").slice(0, 60)) if (line.trim().length >= 8) lines.push(line);
  }
  return every([...new Set(lines)], n);
}

function fromChangelogChunks(files, n) {
  const chunks = [];
  for (const f of every(files, n)) {
    const lines = readText(f).split("\n");
    chunks.push(lines.slice(0, 4 + (chunks.length % 7)).join("\n"));
  }
  return chunks;
}

function fromPackageDescriptions(nShort, nLong) {
  let dump = "";
  try {
    dump = execFileSync("apt-cache", ["dumpavail"], { maxBuffer: 1 << 30 }).toString("utf8");
  } catch {
    return [];
  }
  const short = [], long = [];
  for (const stanza of dump.split("\n\n")) {
    const m = /^Description(?:-[a-zA-Z_]+)?: (.*)\n((?: .*\n?)*)/mu.exec(stanza);
    if (!m) continue;
    short.push(m[1]);
    if (m[2]) long.push(m[2].replace(/\n$/u, ""));
  }
  return [...every([...new Set(short)], nShort), ...every([...new Set(long)], nLong)];
}

function fromCompose(n) {
  const f = "/usr/share/X11/locale/en_US.UTF-8/Compose";
  if (!fs.existsSync(f)) return [];
  const lines = readText(f).split("\n").filter((l) => /[^\x00-\x7f]/u.test(l));
  return every(lines, n);
}

function fromClipMultilingual(here) {
  const f = path.join(here, "..", "clip", "data", "tokenizer_multilingual.json");
  if (!fs.existsSync(f)) return [];
  return JSON.parse(fs.readFileSync(f, "utf8")).cases.map((c) => c.text);
}

// ---- seeded random strings over the pattern's classes --------------------------------------------
const POOL = {
  word: ["the", "The", "THE", "a", "I", "hello", "World", "don", "café", "naïve", "Straße", "Ж", "мир", "λόγος",
         "كتاب", "שלום", "नमस्ते", "ภาษา", "中文", "日本語", "한국어", "ǅ", "ʰ", "々", "Ａ", "𝐀", "𐌰", "𠀀", "e\u0301",
         "n\u0303", "क\u094d\u0937", "x", "Z"],
  number: ["0", "7", "42", "3.14", "1,000", "²", "½", "Ⅻ", "٣", "०", "①", "〇", "𝟏", "2024"],
  contraction: ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "'Re", "'lL",
                "n't", "'", "''", "’s"],
  other: [".", ",", "!", "?", "...", "--", "—", "…", "(", ")", "\"", "“", "”", "«", "»", "@", "#", "$", "%", "&", "*",
          "+", "=", "/", "\\", "|", "~", "^", "`", "_", "<", ">", "[", "]", "{", "}", ":", ";", "€", "©", "™", "→",
          "∑", "《", "」", "•", "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "\u0301", "\u0903", "\u20dd", "\u200d",
          "\u00ad", "\ufe0f", "\ue000", "\u0378", "\u0001", "\u007f", "\u001c", "\u001f", "<|endoftext|>"],
  space: [" ", " ", " ", " ", "  ", "   ", "\t", "\n", "\r\n", "\u000b", "\u000c", "\u00a0", "\u2002", "\u2009",
          "\u3000", "\u2028", "\u2029", "\u1680", "\u202f", "\u205f", " \t", "\n\n", " \n "],
};
const KINDS = [["word", 6], ["number", 2], ["contraction", 2], ["other", 3], ["space", 5]];
function randomText() {
  const total = KINDS.reduce((s, [, w]) => s + w, 0);
  const n = 1 + Math.floor(rand() * 24);
  let out = "";
  for (let k = 0; k < n; ++k) {
    let r = rand() * total;
    let kind = KINDS[0][0];
    for (const [name, w] of KINDS) {
      if ((r -= w) < 0) {
        kind = name;
        break;
      }
    }
    out += pick(POOL[kind]);
  }
  return out;
}

function newBattery(here) {
  const items = [];
  const add = (source, texts) => {
    for (const t of texts) items.push({ source, text: t.length > MAX_CHARS ? t.slice(0, MAX_CHARS) : t });
  };
  for (const [name, texts] of Object.entries(HAND)) add(`hand/${name}`, texts);
  add("common-licenses", fromLicenses(700));
  const logs = changelogs();
  add("changelog-lines", fromChangelogLines(logs, 900));
  add("changelog-chunks", fromChangelogChunks(logs, 150));
  add("package-descriptions", fromPackageDescriptions(700, 250));
  add("x11-compose", fromCompose(200));
  add("clip-multilingual", fromClipMultilingual(here));
  const random = [];
  for (let k = 0; k < 1200; ++k) random.push(randomText());
  add("random", random);
  // A text cut at MAX_CHARS may end in half a surrogate pair: drop what is not well-formed.
  const seen = new Set();
  return items.filter(({ text }) => {
    if (!text.isWellFormed() || JS_PYTHON_DIFFER.test(text) || seen.has(text)) return false;
    seen.add(text);
    return true;
  });
}

function oldBattery(file) {
  const lines = fs.readFileSync(file, "utf8").split("\n").filter((l) => l.length > 0);
  return lines.slice(1).map((l) => {
    const { source, text } = JSON.parse(l);
    return { source, text };
  });
}

// ---- golden ------------------------------------------------------------------------------------
const here = path.dirname(new URL(import.meta.url).pathname);
const battery = batteryArg === "--new-battery" ? newBattery(here) : oldBattery(batteryArg);
const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8"));
const out = [JSON.stringify({
  generator: `${pkg.name}@${pkg.version} encode()/decode()`,
  count: battery.length,
  note: "one {source, text, ids, prefixes} per line; prefixes: [k, decode(ids[0..k))] where that cuts a character",
})];
for (const { source, text } of battery) {
  if (JS_PYTHON_DIFFER.test(text)) throw new Error(`battery text has U+0085 or U+FEFF: ${JSON.stringify(text)}`);
  const ids = encode(text);
  if (decode(ids) !== text) throw new Error(`gpt-3-encoder does not round-trip ${JSON.stringify(text)}`);
  const prefixes = [];
  for (let k = 1; k < ids.length && prefixes.length < 3; ++k) {
    const d = decode(ids.slice(0, k));
    if (d.includes("\ufffd") && !text.includes("\ufffd")) prefixes.push([k, d]);
  }
  out.push(JSON.stringify({ source, text, ids, prefixes }));
}
process.stdout.write(out.join("\n") + "\n");
