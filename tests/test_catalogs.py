"""Gettext catalogues: the .mo and .po readers against files built here byte by byte,
their errors on broken files, and the aligned strings against a hand answer."""

import gettext
import struct

import pytest

from bridge.datasets.catalogs import (
    AlignedString,
    Message,
    aligned_strings,
    clean_text,
    count_letters,
    plural_index,
    read_catalogue,
    read_mo,
    read_po,
)
from bridge.errors import CorruptFile, InvalidParameter

HEADER = ("Project-Id-Version: test\nLanguage: {lang}\nMIME-Version: 1.0\n"
          "Content-Type: text/plain; charset={charset}\n"
          "Plural-Forms: nplurals=3; plural=(n==1 ? 0 : n<5 ? 1 : 2);\n")


def mo_bytes(entries, order="<", magic=0x950412DE, revision=0, hash_size=0, nul=True):
    """A .mo file as GNU msgfmt lays it out: header, originals table, translations table,
    hash table (empty here), then the NUL-terminated strings."""
    entries = sorted(entries)
    n = len(entries)
    o_off, t_off = 28, 28 + 8 * n
    h_off = t_off + 8 * n
    pos = h_off + 4 * hash_size
    tables, blob = [b"", b""], b""
    for side in (0, 1):
        for e in entries:
            s = e[side]
            tables[side] += struct.pack(order + "2I", len(s), pos + len(blob))
            blob += s + (b"\0" if nul else b"")
    head = struct.pack(order + "7I", magic, revision, n, o_off, t_off, hash_size, h_off)
    return head + tables[0] + tables[1] + b"\0" * (4 * hash_size) + blob


def sample_entries(lang="ru", charset="UTF-8", enc="utf-8"):
    return [
        (b"", HEADER.format(lang=lang, charset=charset).encode(enc)),
        ("Save".encode(enc), "Сохранить".encode(enc)),
        ("month\x04May".encode(enc), "мая".encode(enc)),
        ("%(n)d file\x00%(n)d files".encode(enc), "%(n)d файл\x00%(n)d файла\x00%(n)d файлов".encode(enc)),
    ]


EXPECTED = [
    Message("", HEADER.format(lang="ru", charset="UTF-8")),
    Message("%(n)d file", "%(n)d файл", plural="%(n)d files",
            forms=("%(n)d файл", "%(n)d файла", "%(n)d файлов")),
    Message("Save", "Сохранить"),
    Message("May", "мая", context="month"),
]


@pytest.mark.parametrize("order", ["<", ">"])
def test_mo_reader_reads_what_was_written_in_either_byte_order(tmp_path, order):
    path = tmp_path / f"ru{order == '>'}.mo"
    path.write_bytes(mo_bytes(sample_entries(), order=order, hash_size=3))
    cat = read_mo(path)
    assert cat.messages == EXPECTED  # the originals table is sorted by its raw bytes
    assert cat.language == "ru" and cat.charset == "UTF-8" and len(cat) == 4
    assert cat.header["Plural-Forms"].startswith("nplurals=3")
    assert cat.messages[0].is_header and not cat.messages[3].is_header
    # the standard library reads the same file to the same strings
    with open(path, "rb") as f:
        ref = gettext.GNUTranslations(f)
    assert ref.gettext("Save") == "Сохранить"
    assert ref.pgettext("month", "May") == "мая"
    assert [ref.ngettext("%(n)d file", "%(n)d files", k) for k in (1, 3, 7)] == list(EXPECTED[1].forms)
    assert read_catalogue(path).messages == cat.messages


def test_mo_reader_decodes_with_the_charset_of_the_header(tmp_path):
    entries = [(b"", HEADER.format(lang="de", charset="ISO-8859-1").encode("latin-1")),
               (b"Delete", "L\u00f6schen".encode("latin-1"))]
    (tmp_path / "de.mo").write_bytes(mo_bytes(entries, revision=1))  # minor revision 1
    cat = read_mo(tmp_path / "de.mo")
    assert cat.charset == "ISO-8859-1"
    assert cat.messages[1] == Message("Delete", "L\u00f6schen")


def _patched(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4:]


GOOD = mo_bytes(sample_entries())
N = len(sample_entries())
BROKEN = {
    "bad magic": (b"\x00\x01\x02\x03" + GOOD[4:], "'magic'"),
    "empty file": (b"", "'magic'"),
    "header cut short": (GOOD[:20], "truncated .mo header"),
    "major revision 2": (_patched(GOOD, 4, 2 << 16), "'revision'"),
    "table cut short": (GOOD[:28 + 8 * N - 4], "'originals_offset'"),
    "translations table past the end": (_patched(GOOD, 16, len(GOOD) - 8), "'translations_offset'"),
    "hash table past the end": (_patched(_patched(GOOD, 20, 10), 24, len(GOOD)), "'hash_offset'"),
    "string past the end": (_patched(GOOD, 28 + 8 + 4, len(GOOD) - 2), "runs past the end"),
    "string cut off": (GOOD[:-3], "runs past the end"),
    "no NUL terminator": (mo_bytes(sample_entries(), nul=False), "NUL terminator"),
    "not UTF-8": (mo_bytes(sample_entries() + [(b"Bad", b"\xff\xfe")]), "not valid UTF-8"),
    "unknown charset": (mo_bytes([(b"", HEADER.format(lang="x", charset="NOPE-9").encode())]),
                        "'Content-Type'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_mo_files_raise_corrupt_file_naming_file_and_field(tmp_path, case):
    data, field = BROKEN[case]
    path = tmp_path / "broken.mo"
    path.write_bytes(data)
    with pytest.raises(CorruptFile) as err:
        read_mo(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_duplicate_ids_and_missing_files_are_corrupt(tmp_path):
    dup = [(b"", b"Content-Type: text/plain; charset=UTF-8\n"), (b"A", b"x"), (b"A", b"y")]
    (tmp_path / "dup.mo").write_bytes(mo_bytes(dup))
    with pytest.raises(CorruptFile, match="dup.mo.*'A' is duplicated"):
        read_mo(tmp_path / "dup.mo")
    with pytest.raises(CorruptFile, match="missing.*nope.mo"):
        read_mo(tmp_path / "nope.mo")


PO = r'''# A translator comment
msgid ""
msgstr ""
"Language: ru\n"
"Content-Type: text/plain; charset=UTF-8\n"

#: app.py:1
msgid "Save"
msgstr "Сохранить"

#, fuzzy, python-format
msgid "Delete %(name)s"
msgstr "Удалить %(name)s"

msgctxt "month"
msgid "May"
msgstr "мая"

msgid "Two\n"
"lines \"quoted\" \\ \101"
msgstr "Две\n"
"строки"

msgid "%(n)d file"
msgid_plural "%(n)d files"
msgstr[0] "%(n)d файл"
msgstr[1] "%(n)d файла"
msgstr[2] "%(n)d файлов"

msgid "Untranslated"
msgstr ""

#~ msgid "Old"
#~ msgstr "Старое"
'''


def test_po_reader_reads_contexts_plurals_flags_and_escapes(tmp_path):
    path = tmp_path / "ru.po"
    path.write_text(PO, encoding="utf-8")
    cat = read_po(path)
    assert cat.language == "ru"
    assert cat.messages[1:] == [
        Message("Save", "Сохранить"),
        Message("Delete %(name)s", "Удалить %(name)s", fuzzy=True),
        Message("May", "мая", context="month"),
        Message('Two\nlines "quoted" \\ A', "Две\nстроки"),
        Message("%(n)d file", "%(n)d файл", plural="%(n)d files",
                forms=("%(n)d файл", "%(n)d файла", "%(n)d файлов")),
        Message("Untranslated", ""),
    ]
    assert read_catalogue(path).messages == cat.messages


@pytest.mark.parametrize("text, where", [
    ('msgid "A\nmsgstr "B"\n', ":1: expected a quoted string"),
    ('msgid "A"\nmsgstr "B"\nmsgstr "C"\n', ":3: keyword msgstr out of place"),
    ('msgid "A"\nmsgid_plural "As"\nmsgstr[1] "B"\n', ":3: msgstr[1] out of order"),
    ('msgid "A"\nmsgid_plural "As"\nmsgstr "B"\n', ":3: keyword msgstr out of place"),
    ('msgid "A"\nmsgstr "B"\nmsgid "A"\nmsgstr "C"\n', ":3: msgid 'A' is duplicated"),
    ('msgid "A"\n\n# c\nmsgid "B"\nmsgstr ""\n', ":4: keyword msgid out of place"),
    ('msgid "A"\n', ":1: entry ends without msgstr"),
    ('"loose"\n', ":1: a string continues no keyword"),
    ('msgid "A\\q"\nmsgstr ""\n', ":1: unknown escape"),
    ('msgfoo "A"\n', ":1: expected msgctxt"),
])
def test_broken_po_files_raise_corrupt_file_naming_the_line(tmp_path, text, where):
    path = tmp_path / "bad.po"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CorruptFile) as err:
        read_po(path)
    assert f"{path}{where}" in str(err.value)


def test_clean_text_fills_placeholders_and_drops_markup():
    assert clean_text("Delete %(name)s?") == "Delete X?"
    assert clean_text("Ensure it has at most %(limit)d characters (it has %d).") == \
        "Ensure it has at most 3 characters (it has 3)."
    assert clean_text("%.2f%% done, %s left") == "3% done, X left"
    assert clean_text("Hello {name}, {{literal}} {0}") == "Hello X, {literal} X"
    assert clean_text("<b>Bold</b>\n  and\u200b <a href='x'>link</a>") == "Bold and link"
    assert clean_text("%(a)s", number="N", string="S") == "S"
    assert count_letters("%(name)s: %s") == 0 and count_letters("Add %(name)s") == 3


def _mo(tmp_path, name, lang, pairs, fuzzy_po=None):
    entries = [(b"", HEADER.format(lang=lang, charset="UTF-8").encode())]
    entries += [(k.encode(), v.encode()) for k, v in pairs]
    path = tmp_path / f"{name}.mo"
    path.write_bytes(mo_bytes(entries))
    return path


def test_aligned_strings_keeps_what_every_language_translates(tmp_path):
    de = _mo(tmp_path, "de", "de", [
        ("Save", "Speichern"), ("Delete %(name)s", "%(name)s löschen"), ("OK", "OK"),
        ("%(name)s", "%(name)s"), ("Close", "Schließen"), ("Log out", "Abmelden"),
        ("Home", "Start"), ("Start", "Start"), ("Untranslated", ""),
        ("file\x00files", "Datei\x00Dateien"), ("A very long sentence indeed.", "Ein sehr langer Satz."),
        ("ctx\x04Open", "Öffnen (ctx)"), ("Open", "Öffnen"),
    ])
    de_app = _mo(tmp_path, "de_app", "de", [("Save", "Sichern"), ("Search", "Suchen")])
    ru = _mo(tmp_path, "ru", "ru", [
        ("Save", "Сохранить"), ("Delete %(name)s", "Удалить %(name)s"), ("OK", "ОК"),
        ("%(name)s", "%(name)s"), ("Close", "Закрыть"), ("Home", "Главная"),
        ("Start", "Начало"), ("Untranslated", "Непереведено"), ("file\x00files", "файл\x00файла\x00файлов"),
        ("A very long sentence indeed.", "Очень длинное предложение."), ("Open", "Открыть"),
        ("Search", "Поиск"),
    ])
    ja = tmp_path / "ja.po"
    ja.write_text('msgid ""\nmsgstr "Language: ja\\n"\n\n'
                  'msgid "Save"\nmsgstr "保存"\n\nmsgid "Delete %(name)s"\nmsgstr "%(name)s を削除"\n\n'
                  'msgid "OK"\nmsgstr "OK"\n\nmsgid "Close"\nmsgstr "閉じる"\n\n'
                  '#, fuzzy\nmsgid "Home"\nmsgstr "ホーム"\n\nmsgid "Start"\nmsgstr "開始"\n\n'
                  'msgid "Open"\nmsgstr "開く"\n\nmsgid "Search"\nmsgstr "閉じる"\n\n'
                  'msgid "A very long sentence indeed."\nmsgstr "とても長い文です。"\n',
                  encoding="utf-8")
    rows = aligned_strings({"de": [de, de_app], "ru": ru}, max_chars=20)
    # "OK" and "Start" are identical in German, "%(name)s" is only a placeholder,
    # "Untranslated" empty in German, "Log out" missing in Russian, "file" a plural; the
    # first German catalogue gives "Save"; the context-free "Open" wins over its context
    assert rows == [
        AlignedString("Close", {"de": "Schließen", "ru": "Закрыть"}, None, str(de)),
        AlignedString("Delete %(name)s", {"de": "%(name)s löschen", "ru": "Удалить %(name)s"},
                      None, str(de)),
        AlignedString("Home", {"de": "Start", "ru": "Главная"}, None, str(de)),
        AlignedString("Open", {"de": "Öffnen", "ru": "Открыть"}, None, str(de)),
        AlignedString("Save", {"de": "Speichern", "ru": "Сохранить"}, None, str(de)),
        AlignedString("Search", {"de": "Suchen", "ru": "Поиск"}, None, str(de_app)),
    ]
    three = aligned_strings({"ru": ru, "de": [de, de_app], "ja": ja}, min_chars=5,
                            transform=clean_text)
    # Japanese: "Home" fuzzy, "OK" identical; "Search" and "Close" share a translation,
    # so both go; min_chars=5 drops "Open" and "Save"; lengths are of the cleaned text
    assert [(r.text, r.translations["ja"], r.source) for r in three] == [
        ("A very long sentence indeed.", "とても長い文です。", str(ru)),
        ("Delete X", "X を削除", str(ru)),
    ]
    assert three[1].translations == {"ru": "Удалить X", "de": "X löschen", "ja": "X を削除"}
    singular = aligned_strings({"de": [de, de_app], "ru": ru}, plurals="singular", max_chars=20)
    assert [r for r in singular if r not in rows] == [
        AlignedString("file", {"de": "Datei", "ru": "файл"}, None, str(de))]
    unique_off = aligned_strings({"ja": ja}, unique=False)
    assert {"Close", "Search"} <= {r.text for r in unique_off}
    assert aligned_strings({"de": de, "ru": ru}, min_chars=100) == []


def test_aligned_strings_rejects_bad_arguments(tmp_path):
    path = _mo(tmp_path, "de", "de", [("Save", "Speichern")])
    for kwargs in [dict(catalogues={}), dict(catalogues={"de": []}),
                   dict(catalogues={"de": path}, plurals="all"),
                   dict(catalogues={"de": path}, min_chars=-1),
                   dict(catalogues={"de": path}, min_chars=5, max_chars=3),
                   dict(catalogues={"de": path}, transform="upper")]:
        with pytest.raises(InvalidParameter):
            aligned_strings(**kwargs)
    with pytest.raises(CorruptFile, match="missing"):
        aligned_strings({"de": tmp_path / "none.mo"})


ARABIC = ("n==0 ? 0 : n==1 ? 1 : n==2 ? 2 : n%100>=3 && n%100<=10 ? 3 : "
          "n%100>=11 && n%100<=99 ? 4 : 5")
RUSSIAN = "(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2)"


def test_plural_index_follows_the_c_rules_without_eval():
    assert [plural_index(ARABIC, k) for k in (0, 1, 2, 3, 10, 11, 99, 100, 102, 103, 111)] == \
        [0, 1, 2, 3, 3, 4, 4, 5, 5, 3, 4]
    assert [plural_index(RUSSIAN, k) for k in (1, 2, 5, 11, 21, 22, 25, 111)] == [0, 1, 2, 2, 0, 1, 2, 2]
    assert [plural_index("(n != 1)", k) for k in (0, 1, 2)] == [1, 0, 1]
    assert plural_index("0", 7) == 0 and plural_index("!(n > 1) + 2 * 3 - -1", 0) == 8
    for bad in ["n ==", "n ? 1", "__import__('os')", "(n", "n 1", "n % 0", ""]:
        with pytest.raises(InvalidParameter, match="plural expression"):
            plural_index(bad, 5)


def test_singular_plurals_take_the_form_for_one(tmp_path):
    head = HEADER.format(lang="ar", charset="UTF-8").replace(
        "nplurals=3; plural=(n==1 ? 0 : n<5 ? 1 : 2)", f"nplurals=6; plural={ARABIC}")
    forms = ["لا ملفات", "ملف واحد", "ملفان", "ملفات", "ملفًا", "ملف"]
    ar = tmp_path / "ar.mo"
    ar.write_bytes(mo_bytes([(b"", head.encode()),
                             ("file\x00files".encode(), "\x00".join(forms).encode())]))
    rows = aligned_strings({"ar": ar}, plurals="singular")
    assert [(r.text, r.translations) for r in rows] == [("file", {"ar": "ملف واحد"})]
    assert aligned_strings({"ar": ar}) == []  # plurals skipped by default
    broken = tmp_path / "broken.mo"
    broken.write_bytes(mo_bytes([(b"", head.replace(ARABIC, "n ==").encode()),
                                 (b"file\x00files", b"a\x00b")]))
    with pytest.raises(CorruptFile, match="broken.mo.*'Plural-Forms'"):
        aligned_strings({"ar": broken}, plurals="singular")
