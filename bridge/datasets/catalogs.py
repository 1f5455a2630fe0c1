"""Gettext translation catalogues as parallel text: English message ids and their
translations, read strictly from ``.mo`` (compiled) and ``.po`` (source) files.

Widely used packages ship such catalogues for dozens of languages (Django ships
``django/conf/locale/<lang>/LC_MESSAGES/django.mo`` and one per contrib app), which
makes them a multilingual, multi-domain test set that pip installs.

- :func:`read_mo` follows the GNU ``.mo`` layout: the magic number ``0x950412de`` in
  either byte order, the revision, the string count, the two offset tables (length,
  offset per string, each string NUL-terminated) and the optional hash table; a context
  is joined to its id by ``"\\x04"``, the plural id and the plural forms by ``"\\x00"``.
  Nothing is unpickled or evaluated; a truncated or garbled file raises
  :class:`~bridge.errors.CorruptFile` naming the file and the bad field.
- :func:`read_po` reads the source format (``msgctxt``, ``msgid``, ``msgid_plural``,
  ``msgstr[n]``, ``#, fuzzy`` flags, ``#~`` obsolete entries skipped).
- :func:`aligned_strings` keeps the English ids translated in *every* language given,
  with their translations: the header, fuzzy, empty, placeholder-only and
  identical-to-English entries are dropped, plurals skipped (or their singular taken),
  duplicates removed, rows in a deterministic order.
- :func:`clean_text` fills printf/format placeholders with fixed values and drops
  markup, so every language's row reads as plain text.
- :func:`plural_index` evaluates a ``Plural-Forms`` rule with a small parser of its C
  syntax (never ``eval``).

``scripts/build_ood.py`` builds the project's out-of-domain benchmark from Django's
catalogues with these functions.

>>> from bridge.datasets.catalogs import aligned_strings
>>> rows = aligned_strings({"de": "de/django.mo", "ru": "ru/django.mo"})  # doctest: +SKIP
>>> rows[0].text, rows[0].translations["ru"]                                # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CorruptFile, InvalidParameter

__all__ = [
    "Message",
    "Catalogue",
    "AlignedString",
    "MO_MAGIC",
    "read_mo",
    "read_po",
    "read_catalogue",
    "aligned_strings",
    "clean_text",
    "count_letters",
    "plural_index",
]

#: the first four bytes of a ``.mo`` file, read in the file's own byte order
MO_MAGIC = 0x950412DE
_HEADER_SIZE = 28  # magic, revision, N, O, T, S, H: seven 32-bit words
_CONTEXT_SEP = "\x04"
_PLURAL_SEP = "\x00"


@dataclass(frozen=True)
class Message:
    """One catalogue entry: ``msgid`` (the English text) and its translation ``msgstr``.

    ``context`` is the ``msgctxt`` (``None`` without one); a plural entry has
    ``plural`` (the ``msgid_plural``) and ``forms`` (every ``msgstr[n]``; ``msgstr`` is
    ``forms[0]``). ``fuzzy`` is read from ``.po`` flags (``.mo`` files hold no fuzzy
    entries unless compiled with ``--use-fuzzy``, which leaves no mark).
    """

    msgid: str
    msgstr: str
    context: str | None = None
    plural: str | None = None
    forms: tuple[str, ...] = ()
    fuzzy: bool = False

    @property
    def is_header(self) -> bool:
        return self.msgid == "" and self.context is None


@dataclass
class Catalogue:
    """The messages of one catalogue file, in file order, and its parsed header."""

    path: str
    messages: list[Message]
    header: dict[str, str] = field(default_factory=dict)
    charset: str = "utf-8"

    @property
    def language(self) -> str | None:
        return self.header.get("Language") or None

    def plural_index(self, n: int) -> int:
        """Which of a plural entry's forms serves the count ``n``, by the header's
        ``Plural-Forms`` (English rules, ``n != 1``, without one)."""
        rule = self.header.get("Plural-Forms", "")
        m = re.search(r"plural\s*=\s*([^;]*)", rule)
        if not m:
            return int(n != 1)
        try:
            return plural_index(m.group(1), n)
        except InvalidParameter as e:
            raise CorruptFile(f"{self.path}: header field 'Plural-Forms': {e}") from e

    def __len__(self) -> int:
        return len(self.messages)


@dataclass(frozen=True)
class AlignedString:
    """An English string and its translation in every language asked for.

    ``source`` is the catalogue of the first language that holds the entry (its path),
    ``context`` the entry's ``msgctxt``.
    """

    text: str
    translations: dict[str, str]
    context: str | None = None
    source: str | None = None


# ---------------------------------------------------------------------------
# headers and charsets


def _parse_header(text: str) -> dict[str, str]:
    out = {}
    for line in text.split("\n"):
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def _charset(header: dict[str, str], path, default: str = "utf-8") -> str:
    import codecs

    m = re.search(r"charset\s*=\s*([A-Za-z0-9_.:-]+)", header.get("Content-Type", ""))
    if not m or m.group(1).upper() == "CHARSET":  # the template placeholder
        return default
    name = m.group(1)
    try:
        codecs.lookup(name)
    except LookupError as e:
        raise CorruptFile(f"{path}: header field 'Content-Type' names charset {name!r}, "
                          "which Python does not know; expected e.g. UTF-8") from e
    return name


# ---------------------------------------------------------------------------
# .mo


def _read_bytes(p: Path) -> bytes:
    """The bytes of catalogue ``p``, or :class:`CorruptFile` naming it."""
    try:
        return p.read_bytes()
    except FileNotFoundError as e:
        raise CorruptFile(f"catalogue missing: {p}") from e
    except OSError as e:
        raise CorruptFile(f"catalogue {p} cannot be read: {e}") from e


def read_mo(path: str | os.PathLike) -> Catalogue:
    """Read a compiled gettext catalogue (``.mo``), checking every field against the file.

    Raises :class:`~bridge.errors.CorruptFile` naming the file and the field for a
    missing file, a bad magic number, an unknown major revision, a header or offset
    table cut short, a string that runs past the end of the file or lacks its NUL
    terminator, text not in the header's charset, and a duplicated message id.
    """
    p = Path(path)
    data = _read_bytes(p)
    return _parse_mo(data, str(p))


def _parse_mo(data: bytes, where: str) -> Catalogue:
    size = len(data)
    if size < 4:
        raise CorruptFile(f"{where}: truncated .mo header: {size} bytes, expected at least "
                          f"{_HEADER_SIZE} (field 'magic')")
    (magic,) = struct.unpack("<I", data[:4])
    if magic == MO_MAGIC:
        order = "<"
    elif magic == 0xDE120495:  # the same number written big-endian
        order = ">"
    else:
        raise CorruptFile(f"{where}: field 'magic' is 0x{magic:08x}, expected 0x{MO_MAGIC:08x} "
                          "in either byte order (not a .mo file)")
    if size < _HEADER_SIZE:
        raise CorruptFile(f"{where}: truncated .mo header: {size} bytes, expected at least "
                          f"{_HEADER_SIZE} (fields 'revision' .. 'hash_offset')")
    revision, n, o_off, t_off, h_size, h_off = struct.unpack(order + "6I", data[4:_HEADER_SIZE])
    major = revision >> 16
    if major not in (0, 1):
        raise CorruptFile(f"{where}: field 'revision' is {revision} (major {major}), expected "
                          "major revision 0 or 1")
    for name, off in (("originals_offset", o_off), ("translations_offset", t_off)):
        if off + 8 * n > size:
            raise CorruptFile(f"{where}: field {name!r} = {off} with {n} strings needs "
                              f"{off + 8 * n} bytes but the file has {size} (truncated table)")
    if h_size and h_off + 4 * h_size > size:
        raise CorruptFile(f"{where}: field 'hash_offset' = {h_off} with hash size {h_size} "
                          f"needs {h_off + 4 * h_size} bytes but the file has {size}")

    def raw(table: str, off: int, i: int) -> bytes:
        length, start = struct.unpack_from(order + "2I", data, off + 8 * i)
        if start + length + 1 > size:
            raise CorruptFile(f"{where}: {table} string {i} at offset {start} with length "
                              f"{length} runs past the end of the file ({size} bytes)")
        if data[start + length] != 0:
            raise CorruptFile(f"{where}: {table} string {i} at offset {start} is not followed "
                              "by its NUL terminator")
        return data[start:start + length]

    pairs = [(raw("original", o_off, i), raw("translation", t_off, i)) for i in range(n)]
    header: dict[str, str] = {}
    for k, v in pairs:
        if k == b"":
            header = _parse_header(v.decode("latin-1"))
            break
    charset = _charset(header, where)

    def text(b: bytes, table: str, i: int) -> str:
        try:
            return b.decode(charset)
        except UnicodeDecodeError as e:
            raise CorruptFile(f"{where}: {table} string {i} is not valid {charset} "
                              f"(byte {e.start}: {b[e.start:e.start + 1]!r})") from e

    messages, seen = [], set()
    for i, (k, v) in enumerate(pairs):
        key, val = text(k, "original", i), text(v, "translation", i)
        if key in seen:
            raise CorruptFile(f"{where}: original string {i} {key[:60]!r} is duplicated")
        seen.add(key)
        context = None
        if _CONTEXT_SEP in key:
            context, key = key.split(_CONTEXT_SEP, 1)
        if _PLURAL_SEP in key:
            singular, plural = key.split(_PLURAL_SEP, 1)
            forms = tuple(val.split(_PLURAL_SEP))
            messages.append(Message(singular, forms[0], context, plural, forms))
        else:
            messages.append(Message(key, val, context))
    if header:
        header = _parse_header(next(m.msgstr for m in messages if m.is_header))
    return Catalogue(path=where, messages=messages, header=header, charset=charset)


# ---------------------------------------------------------------------------
# .po

_PO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b",
               "f": "\f", "v": "\v", "?": "?", "'": "'"}
#: which keyword may follow which inside one entry (None: the start of an entry)
_PO_NEXT = {None: ("msgctxt", "msgid"), "msgctxt": ("msgid",), "msgid": ("msgid_plural", "msgstr"),
            "msgid_plural": ("msgstr[]",), "msgstr": (), "msgstr[]": ("msgstr[]",)}
_PO_KEYWORD = re.compile(r"^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(\".*)$")


def _po_string(s: str, where: str, lineno: int) -> str:
    s = s.strip()
    if len(s) < 2 or s[0] != '"' or s[-1] != '"':
        raise CorruptFile(f"{where}:{lineno}: expected a quoted string, got {s[:60]!r}")
    body, out, i = s[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c == '"':
            raise CorruptFile(f"{where}:{lineno}: unescaped quote inside a string")
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(body):
            raise CorruptFile(f"{where}:{lineno}: string ends with a lone backslash")
        e = body[i + 1]
        if e in _PO_ESCAPES:
            out.append(_PO_ESCAPES[e])
            i += 2
        elif e in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            out.append(chr(int(m.group(0), 8)))
            i += 1 + len(m.group(0))
        elif e == "x" and re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:]):
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            out.append(chr(int(m.group(0), 16)))
            i += 2 + len(m.group(0))
        else:
            raise CorruptFile(f"{where}:{lineno}: unknown escape \\{e} in a string")
    return "".join(out)


def read_po(path: str | os.PathLike, encoding: str | None = None) -> Catalogue:
    """Read a gettext source catalogue (``.po``).

    The file is decoded with ``encoding`` or else the charset its header names (UTF-8 by
    default). Obsolete entries (``#~``) are skipped; ``#, fuzzy`` marks an entry
    :attr:`Message.fuzzy`. A keyword out of place, an unterminated or badly escaped
    string, a plural form out of order and a duplicated message id raise
    :class:`~bridge.errors.CorruptFile` naming the file and line.
    """
    p = Path(path)
    data = _read_bytes(p)
    where = str(p)
    if encoding is None:
        m = re.search(rb"charset\s*=\s*([A-Za-z0-9_.:-]+)", data[:4096])
        name = m.group(1).decode("ascii") if m else "utf-8"
        encoding = _charset({"Content-Type": f"charset={name}"}, where)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise CorruptFile(f"{where}: not valid {encoding} at byte {e.start}") from e
    if text.startswith("\ufeff"):
        text = text[1:]

    messages: list[Message] = []
    seen: set[tuple] = set()
    entry: dict = {}
    flags: set[str] = set()
    last: str | None = None  # the field a continuation line extends
    start = 0

    def finish():
        nonlocal entry, flags, last
        if entry:
            if last not in ("msgstr", "msgstr[]"):
                raise CorruptFile(f"{where}:{start}: entry ends without msgstr")
            if "msgid_plural" in entry:
                fs = tuple(entry["forms"])
                msg = Message(entry["msgid"], fs[0], entry.get("msgctxt"), entry["msgid_plural"],
                              fs, "fuzzy" in flags)
            else:
                msg = Message(entry["msgid"], entry["msgstr"], entry.get("msgctxt"),
                              fuzzy="fuzzy" in flags)
            key = (msg.context, msg.msgid)
            if key in seen:
                raise CorruptFile(f"{where}:{start}: msgid {msg.msgid[:60]!r} is duplicated")
            seen.add(key)
            messages.append(msg)
        entry, flags, last = {}, set(), None

    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            if s.startswith("#~"):
                continue
            if last in ("msgstr", "msgstr[]"):
                finish()
            if s.startswith("#,"):
                flags |= {f.strip() for f in s[2:].split(",")}
            continue
        if s.startswith('"'):
            if last is None:
                raise CorruptFile(f"{where}:{lineno}: a string continues no keyword")
            value = _po_string(s, where, lineno)
            if last == "msgstr[]":
                entry["forms"][-1] += value
            else:
                entry[last] += value
            continue
        m = _PO_KEYWORD.match(s)
        if not m:
            raise CorruptFile(f"{where}:{lineno}: expected msgctxt, msgid, msgid_plural or "
                              f"msgstr, got {s[:60]!r}")
        kw, idx, rest = m.group(1), m.group(2), m.group(3)
        kind = "msgstr[]" if idx is not None else kw
        if kind in ("msgctxt", "msgid") and last in ("msgstr", "msgstr[]"):
            finish()
        if not entry:
            start = lineno
        if kind not in _PO_NEXT[last]:
            raise CorruptFile(f"{where}:{lineno}: keyword {kw} out of place (after "
                              f"{last or 'the start of an entry'})")
        value = _po_string(rest, where, lineno)
        if kind == "msgstr[]":
            forms = entry.setdefault("forms", [])
            if int(idx) != len(forms):
                raise CorruptFile(f"{where}:{lineno}: {kw} out of order, expected "
                                  f"msgstr[{len(forms)}]")
            forms.append(value)
        else:
            entry[kw] = value
        last = kind
    finish()
    header = next((_parse_header(m.msgstr) for m in messages if m.is_header), {})
    return Catalogue(path=where, messages=messages, header=header, charset=encoding)


def read_catalogue(path: str | os.PathLike) -> Catalogue:
    """:func:`read_po` for a ``.po`` file, :func:`read_mo` for anything else."""
    return read_po(path) if str(path).endswith(".po") else read_mo(path)


# ---------------------------------------------------------------------------
# clean text

# printf conversions as Python's % operator reads them: %(name)s, %5.2f, %s, %d ...
_PRINTF = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[hlL]?([diouxXeEfFgGcrsa%])")
_BRACES = re.compile(r"\{\{|\}\}|\{[A-Za-z0-9_.\[\]]*(?:![rsa])?(?::[^{}]*)?\}")
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_SPACE = re.compile(r"\s+")
_INVISIBLE = re.compile("[\u200b\ufeff\u00ad]")  # zero-width space, BOM, soft hyphen


def clean_text(text: str, number: str = "3", string: str = "X") -> str:
    """``text`` with placeholders filled and markup dropped, as plain one-line text.

    printf conversions become ``number`` (``%d``, ``%(count)d``, ``%.2f`` ...) or
    ``string`` (``%s``, ``%(name)s``, ``%r``), ``%%`` becomes ``%``; ``{}`` / ``{name}``
    format fields become ``string`` (``{{``/``}}`` become braces); HTML tags, zero-width
    spaces and soft hyphens are removed and runs of white space collapse to one space.
    """

    def printf(m):
        conv = m.group(2)
        if conv == "%":
            return "%"
        return string if conv in "crsa" else number

    def braces(m):
        t = m.group(0)
        return t[0] if t in ("{{", "}}") else string

    out = _PRINTF.sub(printf, text)
    out = _BRACES.sub(braces, out)
    out = _TAG.sub(" ", out)
    out = _INVISIBLE.sub("", out)
    return _SPACE.sub(" ", out).strip()


def count_letters(text: str) -> int:
    """How many alphabetic characters (any script) ``text`` holds once its placeholders
    are removed: an entry with none is only placeholders and punctuation."""
    return sum(c.isalpha() for c in clean_text(text, number="", string=""))


# ---------------------------------------------------------------------------
# plural rules

_PLURAL_TOKEN = re.compile(r"\s*(?:(\d+)|(n)|(\|\||&&|==|!=|<=|>=|[-+*/%<>!?:()]))")
# binary operators by C precedence, lowest first
_BINARY = [("||",), ("&&",), ("==", "!="), ("<", ">", "<=", ">="), ("+", "-"), ("*", "/", "%")]


def plural_index(expression: str, n: int) -> int:
    """Evaluate a gettext ``plural=`` expression (C syntax: ``?:``, ``||``, ``&&``,
    comparisons, ``+ - * / %``, ``!``, parentheses, integers and ``n``) for the count
    ``n``, by a small parser: nothing is handed to ``eval``. A malformed expression
    raises :class:`~bridge.errors.InvalidParameter` naming it."""
    tokens, pos, text = [], 0, expression.strip()
    while pos < len(text):
        m = _PLURAL_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise InvalidParameter(f"plural expression {expression!r}: unexpected text at "
                                   f"{text[pos:pos + 10]!r}")
        tokens.append(int(m.group(1)) if m.group(1) else m.group(2) or m.group(3))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    at = 0

    def peek():
        return tokens[at] if at < len(tokens) else None

    def take(tok=None):
        nonlocal at
        t = peek()
        if t is None or (tok is not None and t != tok):
            raise InvalidParameter(f"plural expression {expression!r}: expected "
                                   f"{tok or 'a value'}, got {t!r}")
        at += 1
        return t

    def ternary():
        cond = binary(0)
        if peek() == "?":
            take("?")
            yes = ternary()
            take(":")
            no = ternary()
            return yes if cond else no
        return cond

    def binary(level):
        if level == len(_BINARY):
            return unary()
        left = binary(level + 1)
        while isinstance(peek(), str) and peek() in _BINARY[level]:
            op = take()
            right = binary(level + 1)
            if op in ("/", "%") and right == 0:
                raise InvalidParameter(f"plural expression {expression!r}: division by zero "
                                       f"for n={n}")
            left = {"||": lambda a, b: int(bool(a or b)), "&&": lambda a, b: int(bool(a and b)),
                    "==": lambda a, b: int(a == b), "!=": lambda a, b: int(a != b),
                    "<": lambda a, b: int(a < b), ">": lambda a, b: int(a > b),
                    "<=": lambda a, b: int(a <= b), ">=": lambda a, b: int(a >= b),
                    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
                    "/": lambda a, b: a // b, "%": lambda a, b: a % b}[op](left, right)
        return left

    def unary():
        t = peek()
        if t == "!":
            take()
            return int(not unary())
        if t == "-":
            take()
            return -unary()
        if t == "(":
            take()
            v = ternary()
            take(")")
            return v
        t = take()
        if t == "n":
            return int(n)
        if isinstance(t, int):
            return t
        raise InvalidParameter(f"plural expression {expression!r}: unexpected {t!r}")

    value = ternary()
    if at != len(tokens):
        raise InvalidParameter(f"plural expression {expression!r}: unexpected {tokens[at]!r}")
    return int(value)


# ---------------------------------------------------------------------------
# aligned strings


def _as_catalogues(value, lang: str) -> list[Catalogue]:
    if isinstance(value, (str, os.PathLike, Catalogue)):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise InvalidParameter(f"catalogues[{lang!r}]: expected a path, a Catalogue or a "
                               f"non-empty list of them, got {value!r:.80}")
    return [v if isinstance(v, Catalogue) else read_catalogue(v) for v in value]


def _usable(m: Message, msgstr: str, text: str, translation: str, plurals: str,
            min_letters: int) -> bool:
    if m.is_header or m.fuzzy or not text.strip() or not translation.strip():
        return False
    if m.plural is not None and plurals == "skip":
        return False
    if translation.strip().casefold() == text.strip().casefold():
        return False
    return count_letters(m.msgid) >= min_letters and count_letters(msgstr) >= 1


def aligned_strings(
    catalogues: Mapping[str, object],
    min_chars: int = 1,
    max_chars: int | None = None,
    *,
    plurals: str = "skip",
    min_letters: int = 2,
    unique: bool = True,
    transform=None,
) -> list[AlignedString]:
    """The English message ids translated in every language of ``catalogues``.

    ``catalogues`` maps a language code to a catalogue path, a :class:`Catalogue`, or a
    list of them (a package's main catalogue and its apps' catalogues: the first one
    holding an id gives its translation). An id is kept when, in every language, it has
    a translation that is not empty, not fuzzy and not the English text itself (compared
    case-insensitively); the header entry and ids with fewer than ``min_letters``
    letters (only placeholders or punctuation) are dropped, and so are ids whose length
    in characters lies outside ``[min_chars, max_chars]``. ``plurals="skip"`` drops
    plural entries; ``"singular"`` keeps the singular id with the form that the
    catalogue's ``Plural-Forms`` rule gives for ``n = 1`` (``msgstr[1]`` in Arabic,
    whose ``msgstr[0]`` is the zero form).

    Each English text appears once: when several entries (contexts, catalogues) share
    it, the first one of the first catalogue wins in each language. With ``unique=True``
    (the default) an id whose translation in some language is also the translation of
    another kept id is dropped, with that other id, so every row is one string in every
    language. Rows come sorted by the English text.

    ``transform`` (a function of one string, e.g. :func:`clean_text`) is applied to the
    English id and to every translation first: the lengths, the identical-to-English
    test, the duplicates and the rows returned are those of the transformed text.
    """
    if not isinstance(catalogues, Mapping) or not catalogues:
        raise InvalidParameter(f"parameter 'catalogues' must be a non-empty mapping of "
                               f"language -> catalogue path(s), got {catalogues!r:.80}")
    if plurals not in ("skip", "singular"):
        raise InvalidParameter(f"parameter 'plurals' must be 'skip' or 'singular', got {plurals!r}")
    for name, v in (("min_chars", min_chars), ("min_letters", min_letters)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidParameter(f"parameter {name!r} must be a non-negative integer, got {v!r}")
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int)
                                  or max_chars < max(min_chars, 1)):
        raise InvalidParameter(f"parameter 'max_chars' must be None or an integer >= "
                               f"min_chars ({min_chars}), got {max_chars!r}")

    if transform is not None and not callable(transform):
        raise InvalidParameter(f"parameter 'transform' must be None or a function of one "
                               f"string, got {transform!r:.80}")
    fix = transform or (lambda t: t)

    # language -> English text -> (translation, entry, catalogue path)
    per_lang: dict[str, dict[str, tuple[str, Message, str]]] = {}
    for lang, value in catalogues.items():
        table: dict[str, tuple[str, Message, str]] = {}
        for cat in _as_catalogues(value, lang):
            # entries without a context first, then by context, within each catalogue
            one = cat.plural_index(1) if plurals == "singular" else 0
            for m in sorted(cat.messages, key=lambda m: (m.context is not None, m.context or "")):
                if m.is_header:
                    continue
                msgstr = m.msgstr
                if m.plural is not None and plurals == "singular":
                    if one >= len(m.forms):
                        raise CorruptFile(f"{cat.path}: 'Plural-Forms' picks form {one} for n=1 "
                                          f"but {m.msgid[:60]!r} has {len(m.forms)} forms")
                    msgstr = m.forms[one]
                text, translation = fix(m.msgid), fix(msgstr)
                if text not in table and _usable(m, msgstr, text, translation, plurals, min_letters):
                    table[text] = (translation, m, cat.path)
        per_lang[str(lang)] = table

    langs = list(per_lang)
    first = per_lang[langs[0]]
    keys = [k for k in first
            if all(k in per_lang[lang] for lang in langs[1:])
            and min_chars <= len(k) and (max_chars is None or len(k) <= max_chars)]
    if unique:
        clash: set[str] = set()
        for lang in langs:
            owner: dict[str, str] = {}
            for k in keys:
                t = per_lang[lang][k][0].strip().casefold()
                if t in owner:
                    clash |= {k, owner[t]}
                else:
                    owner[t] = k
        keys = [k for k in keys if k not in clash]
    keys.sort()
    rows = [AlignedString(text=k, translations={lang: per_lang[lang][k][0] for lang in langs},
                          context=first[k][1].context, source=first[k][2]) for k in keys]
    return rows
