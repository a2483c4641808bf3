"""Tests for aa_deploy.data: GLUE readers, generic files, load_task, low_data_split.

Almost everything runs on tiny handmade files that reproduce the real format quirks; a few
tests at the end read the real GLUE folder (AA_GLUE_DIR) and are skipped when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aa_deploy.data import (
    GLUE_TASKS,
    DataError,
    Example,
    TaskData,
    TaskDefinition,
    glue_spec,
    load_file_task,
    load_task,
    low_data_split,
    read_glue_split,
)


def write(path: Path, content: str | bytes) -> Path:
    """Write bytes exactly as given (no newline translation), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def tsv(*rows: str, trailing_newline: bool = True) -> str:
    return "\n".join(rows) + ("\n" if trailing_newline else "")


# --------------------------------------------------------------------------- GLUE fixture

SST2_TRAIN = tsv(
    "sentence\tlabel",
    "it 's a charming and often affecting journey . \t1",
    'the " quoted " part is literal \t0',
    '"unbalanced quote at the start\t1',
)
COLA_TRAIN = tsv(
    "gj04\t1\t\tOur friends won't buy this analysis.",
    "gj04\t0\t*\tThey drank the pub.",
    'bc01\t1\t\tShe said "hi" to him.',
)
COLA_DEV = tsv(
    "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.",
    "clc95\t0\t*\tBill about himself.",
    trailing_newline=False,
)
MRPC_TRAIN = "\ufeff" + tsv(
    "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
    '1\t702876\t702977\tAmrozi called him "the witness".\tReferring to him as "the witness", Amrozi spoke.',
    '0\t2108705\t2108831\tYucaipa owned it.\t"Yucaipa bought it in 1998.',
)
RTE_TRAIN = tsv(
    "index\tsentence1\tsentence2\tlabel",
    "0\tNo weapons were found.\tWeapons were found.\tnot_entailment",
    '1\tThe "pope" died.\tA pope died.\tentailment',
)
QNLI_DEV = tsv(
    "index\tquestion\tsentence\tlabel",
    "0\tWhat came into force?\tThe constitution came into force.\tentailment",
    '1\tWho found it?\t" Luis Walter Alvarez found it.\tnot_entailment',
)
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
STSB_TRAIN = tsv(
    STSB_HEADER,
    "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane takes off.\tAn air plane takes off.\t5.000",
    '1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays a flute.\tA man plays "music".\t3.800',
    "2\tmain-news\theadlines\t2013\t0005\tnone\tnone\tOne.\tTwo.\t0",
)


@pytest.fixture
def handmade_glue(tmp_path: Path) -> Path:
    """A miniature GLUE folder: every task has train+dev except QNLI (dev only, as here)."""
    root = tmp_path / "glue"
    write(root / "SST-2" / "train.tsv", SST2_TRAIN)
    write(root / "SST-2" / "dev.tsv", tsv("sentence\tlabel", "good . \t1", "bad . \t0"))
    write(root / "CoLA" / "train.tsv", COLA_TRAIN)
    write(root / "CoLA" / "dev.tsv", COLA_DEV)
    write(root / "MRPC" / "train.tsv", MRPC_TRAIN)
    write(root / "MRPC" / "dev.tsv", MRPC_TRAIN)
    write(root / "RTE" / "train.tsv", RTE_TRAIN)
    write(root / "RTE" / "dev.tsv", RTE_TRAIN)
    write(root / "STS-B" / "train.tsv", STSB_TRAIN)
    write(root / "STS-B" / "dev.tsv", STSB_TRAIN)
    write(root / "QNLI" / "dev.tsv", QNLI_DEV)
    return root


# --------------------------------------------------------------------------- GLUE formats


def test_sst2_keeps_literal_quotes_and_text_verbatim(handmade_glue: Path) -> None:
    data = load_task("sst2", handmade_glue)
    assert data.spec == TaskDefinition("sst2", "accuracy", ["0", "1"], is_pair=False)
    assert [e.label for e in data.train] == [1, 0, 1]
    assert data.train[0].text == "it 's a charming and often affecting journey . "
    assert data.train[1].text == 'the " quoted " part is literal '
    # An unbalanced quote must not swallow the following rows (quoting is off).
    assert data.train[2].text == '"unbalanced quote at the start'
    assert all(e.text_pair is None for e in data.train)
    assert data.test == [Example("good . ", None, 1), Example("bad . ", None, 0)]


def test_cola_has_no_header_and_dev_no_trailing_newline(handmade_glue: Path) -> None:
    data = load_task("cola", handmade_glue)
    assert data.spec.metric == "matthews_correlation"
    assert data.spec.label_names == ["0", "1"]
    # The first line is data, not a header.
    assert data.train[0] == Example("Our friends won't buy this analysis.", None, 1)
    assert data.train[2].text == 'She said "hi" to him.'
    assert [e.label for e in data.train] == [1, 0, 1]
    # The last dev row has no newline after it and is still read.
    assert data.test is not None and len(data.test) == 2
    assert data.test[-1] == Example("Bill about himself.", None, 0)


def test_mrpc_bom_label_in_first_column(handmade_glue: Path) -> None:
    data = load_task("mrpc", handmade_glue)
    assert data.spec == TaskDefinition("mrpc", "f1", ["0", "1"], is_pair=True)
    assert data.train[0].label == 1
    assert data.train[0].text == 'Amrozi called him "the witness".'
    assert data.train[0].text_pair == 'Referring to him as "the witness", Amrozi spoke.'
    assert data.train[1] == Example("Yucaipa owned it.", '"Yucaipa bought it in 1998.', 0)


@pytest.mark.parametrize("task", ["rte", "RTE"])
def test_rte_string_labels(handmade_glue: Path, task: str) -> None:
    data = load_task(task, handmade_glue)
    assert data.spec == TaskDefinition("rte", "accuracy", ["entailment", "not_entailment"], is_pair=True)
    assert data.train == [
        Example("No weapons were found.", "Weapons were found.", 1),
        Example('The "pope" died.', "A pope died.", 0),
    ]


def test_stsb_float_label_in_last_column(handmade_glue: Path) -> None:
    data = load_task("sts-b", handmade_glue)
    assert data.spec == TaskDefinition("stsb", "spearman", None, is_pair=True)
    assert data.spec.is_regression and data.spec.num_labels == 1
    assert [e.label for e in data.train] == [5.0, 3.8, 0.0]
    assert all(isinstance(e.label, float) for e in data.train)
    assert data.train[1].text_pair == 'A man plays "music".'


def test_qnli_dev_readable_for_evaluation(handmade_glue: Path) -> None:
    dev = read_glue_split("qnli", handmade_glue, "dev")
    assert [e.label for e in dev] == [0, 1]
    assert dev[1].text_pair == '" Luis Walter Alvarez found it.'


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("SST-2", "sst2"), ("sst_2", "sst2"), ("STS-B", "stsb"), ("Cola", "cola"), ("MRPC", "mrpc")],
)
def test_task_name_aliases(handmade_glue: Path, alias: str, canonical: str) -> None:
    assert load_task(alias, handmade_glue).spec.name == canonical


@pytest.mark.parametrize(
    ("task", "metric", "labels", "is_pair"),
    [
        ("sst2", "accuracy", ["0", "1"], False),
        ("cola", "matthews_correlation", ["0", "1"], False),
        ("mrpc", "f1", ["0", "1"], True),
        ("rte", "accuracy", ["entailment", "not_entailment"], True),
        ("qnli", "accuracy", ["entailment", "not_entailment"], True),
        ("stsb", "spearman", None, True),
    ],
)
def test_glue_specs(task: str, metric: str, labels: list[str] | None, is_pair: bool) -> None:
    assert glue_spec(task) == TaskDefinition(task, metric, labels, is_pair)
    assert task in GLUE_TASKS


def test_crlf_line_endings_are_accepted(handmade_glue: Path) -> None:
    write(handmade_glue / "RTE" / "train.tsv", RTE_TRAIN.replace("\n", "\r\n"))
    data = load_task("rte", handmade_glue)
    assert data.train[0].label == 1  # "not_entailment\r" would not be a known label


def test_glue_metric_override(handmade_glue: Path) -> None:
    assert load_task("mrpc", handmade_glue, metric="accuracy").spec.metric == "accuracy"
    with pytest.raises(DataError, match="regression"):
        load_task("stsb", handmade_glue, metric="accuracy")
    with pytest.raises(DataError, match="unknown metric 'acc'"):
        load_task("rte", handmade_glue, metric="acc")


def test_glue_test_file_replaces_dev_split(handmade_glue: Path, tmp_path: Path) -> None:
    challenge = write(
        tmp_path / "challenge.tsv",
        tsv("index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\tentailment"),
    )
    (handmade_glue / "RTE" / "dev.tsv").unlink()  # not needed when a test file is given
    data = load_task("rte", handmade_glue, test_file=challenge)
    assert data.test == [Example("A.", "B.", 0)]


# --------------------------------------------------------------------------- GLUE errors


def test_malformed_row_names_file_and_line(handmade_glue: Path) -> None:
    path = write(
        handmade_glue / "RTE" / "train.tsv",
        tsv("index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "1\ta\tb"),
    )
    with pytest.raises(DataError, match=r"line 3: expected 4 tab-separated fields") as err:
        load_task("rte", handmade_glue)
    assert str(path) in str(err.value)


def test_label_outside_set_names_file_and_line(handmade_glue: Path) -> None:
    path = write(handmade_glue / "SST-2" / "train.tsv", tsv("sentence\tlabel", "ok\t1", "bad\t2"))
    with pytest.raises(DataError, match=r"line 3: label '2' is not one of 0, 1") as err:
        load_task("sst2", handmade_glue)
    assert str(path) in str(err.value)


def test_cola_label_outside_set_on_first_line(handmade_glue: Path) -> None:
    # A CoLA file with a header row is not the GLUE CoLA file: line 1 is then rejected.
    write(handmade_glue / "CoLA" / "train.tsv", tsv("source\tlabel\tmark\tsentence", "a\t1\t\tx"))
    with pytest.raises(DataError, match="line 1: label 'label'"):
        load_task("cola", handmade_glue)


@pytest.mark.parametrize("score", ["high", "5.5", "-0.1", "nan"])
def test_stsb_bad_score(handmade_glue: Path, score: str) -> None:
    write(
        handmade_glue / "STS-B" / "train.tsv",
        tsv(STSB_HEADER, "0\tg\tf\ty\t1\tn\tn\tA.\tB.\t" + score),
    )
    with pytest.raises(DataError, match=r"line 2: label .* is not a number in \[0.0, 5.0\]"):
        load_task("stsb", handmade_glue)


def test_wrong_header_is_rejected(handmade_glue: Path) -> None:
    # e.g. a Hugging Face export with reordered columns
    write(handmade_glue / "RTE" / "train.tsv", tsv("sentence1\tsentence2\tlabel\tidx", "a\tb\t0\t0"))
    with pytest.raises(DataError, match="line 1: header .* does not look like the GLUE RTE"):
        load_task("rte", handmade_glue)


def test_header_only_file(handmade_glue: Path) -> None:
    write(handmade_glue / "SST-2" / "train.tsv", tsv("sentence\tlabel"))
    with pytest.raises(DataError, match="contains no examples"):
        load_task("sst2", handmade_glue)


def test_missing_train_file_says_evaluation_only(handmade_glue: Path) -> None:
    with pytest.raises(DataError) as err:
        load_task("qnli", handmade_glue)
    message = str(err.value)
    assert str(handmade_glue / "QNLI" / "train.tsv") in message
    assert "can only be evaluated" in message
    assert "--data-dir" in message and "full GLUE folder" in message


def test_missing_dev_file(handmade_glue: Path) -> None:
    (handmade_glue / "RTE" / "dev.tsv").unlink()
    with pytest.raises(DataError, match=r"RTE/dev.tsv is missing: rte has no test set"):
        load_task("rte", handmade_glue)


def test_glue_task_without_data_dir() -> None:
    with pytest.raises(DataError, match=r"needs a data folder: pass --data-dir .*RTE"):
        load_task("rte")


def test_glue_data_dir_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as err:
        load_task("cola", missing)
    assert str(missing) in str(err.value) and "CoLA" in str(err.value)


def test_data_dir_pointing_at_task_folder_gets_a_hint(handmade_glue: Path) -> None:
    with pytest.raises(DataError, match="single task's folder: point at its parent"):
        load_task("rte", handmade_glue / "RTE")


def test_invalid_utf8_names_line(handmade_glue: Path) -> None:
    write(handmade_glue / "SST-2" / "train.tsv", b"sentence\tlabel\nok\t1\nbad \xff\t0\n")
    with pytest.raises(DataError, match="line 3: not valid UTF-8"):
        load_task("sst2", handmade_glue)


def test_unknown_task() -> None:
    with pytest.raises(DataError) as err:
        load_task("mnli-ish", "/does/not/matter")
    message = str(err.value)
    assert message.startswith("unknown task 'mnli-ish': expected one of")
    assert all(t in message for t in GLUE_TASKS)
    assert ".csv/.tsv/.jsonl" in message


def test_missing_data_file_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_task(str(tmp_path / "train.csv"))


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------- generic files


def test_csv_quoted_fields_and_sorted_string_labels(tmp_path: Path) -> None:
    path = write(
        tmp_path / "reviews.csv",
        'id,text,label\n1,"Good, really good",pos\n2,"He said ""bad""",neg\n3,"two\nlines",neutral\n',
    )
    data = load_task(str(path))
    assert data.spec == TaskDefinition("reviews", "accuracy", ["neg", "neutral", "pos"], False)
    assert data.train == [
        Example("Good, really good", None, 2),
        Example('He said "bad"', None, 0),
        Example("two\nlines", None, 1),
    ]
    assert data.test is None


def test_integer_labels_sorted_numerically(tmp_path: Path) -> None:
    rows = "".join(f"t{i},{label}\n" for i, label in enumerate([10, 2, 9, 2, 1, 10]))
    data = load_file_task(write(tmp_path / "d.csv", "text,label\n" + rows))
    assert data.spec.label_names == ["1", "2", "9", "10"]
    assert [e.label for e in data.train] == [3, 1, 2, 1, 0, 3]


def test_tsv_has_no_quoting_and_pair_column(tmp_path: Path) -> None:
    path = write(tmp_path / "p.tsv", 'label\ttext\ttext_pair\nyes\t"a\tb "c"\nno\tx\ty\n')
    data = load_file_task(path)
    assert data.spec.is_pair and data.spec.label_names == ["no", "yes"]
    assert data.train[0] == Example('"a', 'b "c"', 1)


def test_jsonl_pair_and_blank_lines(tmp_path: Path) -> None:
    lines = [
        {"text": "a", "text_pair": "b", "label": "x"},
        {"text": "c", "text_pair": "d", "label": "y", "extra": 1},
    ]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    data = load_file_task(path)
    assert data.spec.is_pair
    assert data.train == [Example("a", "b", 0), Example("c", "d", 1)]


def test_regression_inferred_from_non_integer_number(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "text,label\na,1\nb,2.5\nc,0\n")
    data = load_file_task(path)
    assert data.spec == TaskDefinition("r", "spearman", None, False)
    assert [e.label for e in data.train] == [1.0, 2.5, 0.0]


def test_integer_valued_floats_stay_classification(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", '{"text": "a", "label": 1.0}\n{"text": "b", "label": 0}\n')
    data = load_file_task(path)
    assert data.spec.label_names == ["0", "1"]
    assert [e.label for e in data.train] == [1, 0]


def test_problem_type_override(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "text,label\na,1\nb,3\nc,2\n")
    regression = load_file_task(path, problem_type="regression")
    assert regression.spec.is_regression and [e.label for e in regression.train] == [1.0, 3.0, 2.0]
    floats = write(tmp_path / "f.csv", "text,label\na,0.5\nb,1.5\n")
    classification = load_file_task(floats, problem_type="classification")
    assert classification.spec.label_names == ["0.5", "1.5"]
    with pytest.raises(DataError, match="problem_type"):
        load_file_task(path, problem_type="ranking")  # type: ignore[arg-type]


def test_regression_with_text_label_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "text,label\na,0.5\nb,high\n")
    with pytest.raises(DataError, match=r"line 3: label 'high' is not a number"):
        load_file_task(path)


def test_explicit_label_names(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "text,label\na,pos\nb,neg\n")
    data = load_file_task(path, label_names=["pos", "neg", "neutral"])
    assert data.spec.label_names == ["pos", "neg", "neutral"]
    assert [e.label for e in data.train] == [0, 1]
    with pytest.raises(DataError, match=r"line 3: label 'neg' is not one of"):
        load_file_task(path, label_names=["pos", "other"])


def test_test_file_label_outside_train_set(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", "text,label\na,pos\nb,neg\n")
    test = write(tmp_path / "test.csv", "text,label\nc,neg\nd,meh\n")
    with pytest.raises(DataError, match=r"line 3: label 'meh' is not one of") as err:
        load_task(str(train), test_file=test)
    assert str(test) in str(err.value)


def test_train_and_test_files(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    test = write(tmp_path / "test.csv", "label,text\n1,c\n")
    data = load_task(str(train), test_file=test, metric="matthews_correlation")
    assert data.spec.name == "train" and data.spec.metric == "matthews_correlation"
    assert data.test == [Example("c", None, 1)]


def test_test_file_must_match_pairness(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", "text,text_pair,label\na,b,1\nc,d,0\n")
    test = write(tmp_path / "test.csv", "text,label\nc,1\n")
    with pytest.raises(DataError, match="lacks a text_pair column"):
        load_file_task(train, test)


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("m.csv", "sentence,label\na,1\n", r"line 1: missing column\(s\) text"),
        ("m.tsv", "text\tlabels\na\t1\n", r"line 1: missing column\(s\) label"),
        ("e.csv", "", "file is empty"),
        ("e.jsonl", "\n\n", "file is empty"),
        ("h.csv", "text,label\n", "has a header but no examples"),
        ("x.csv", "text,label\na,1\nb,0,extra\n", "line 3: 3 field.* header has 2"),
        ("q.csv", 'text,label\n"a"b,1\n', r"line 2: malformed CSV"),
        ("j.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n', "line 2: not valid JSON"),
        ("o.jsonl", '{"text": "a", "label": 1}\n["b", 0]\n', "line 2: expected a JSON object"),
        ("k.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', "line 2: missing key 'label'"),
        ("t.jsonl", '{"text": 5, "label": 1}\n', "line 1: 'text' must be a string"),
        ("b.jsonl", '{"text": "a", "label": true}\n', "line 1: label True is a boolean"),
        ("n.csv", "text,label\na,\n", "line 2: the label is empty"),
        ("s.csv", "text,label\n  ,1\n", "line 2: 'text' is empty"),
        ("d.csv", "text,label,TEXT\na,1,b\n", r"duplicate column\(s\) text"),
        ("one.csv", "text,label\na,1\nb,1\n", "needs at least two classes"),
        (
            "p.jsonl",
            '{"text": "a", "text_pair": "b", "label": 1}\n{"text": "c", "label": 0}\n',
            "line 2: 'text_pair' is missing",
        ),
    ],
)
def test_generic_file_errors(tmp_path: Path, name: str, content: str, pattern: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=pattern) as err:
        load_file_task(path)
    assert str(path) in str(err.value)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "text,label\na,1\n")
    with pytest.raises(DataError, match=r"unsupported file type \.txt"):
        load_task(str(path))


# --------------------------------------------------------------------------- dataclasses


def test_dataclasses_round_trip_through_json(handmade_glue: Path) -> None:
    for task in ("rte", "stsb"):
        data = load_task(task, handmade_glue)
        assert TaskData.from_dict(json.loads(json.dumps(data.to_dict()))) == data
        spec = data.spec
        assert TaskDefinition.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        example = data.train[0]
        assert Example.from_dict(json.loads(json.dumps(example.to_dict()))) == example


def test_task_spec_properties() -> None:
    classification = TaskDefinition("t", "accuracy", ["a", "b", "c"], False)
    assert not classification.is_regression and classification.num_labels == 3
    regression = TaskDefinition("r", "pearson", None, True)
    assert regression.is_regression and regression.num_labels == 1


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"metric": "auc", "label_names": ["0", "1"]}, "unknown metric 'auc'"),
        ({"metric": "f1", "label_names": ["a", "b", "c"]}, "needs exactly two classes"),
        ({"metric": "spearman", "label_names": ["0", "1"]}, "classification task"),
        ({"metric": "accuracy", "label_names": None}, "regression task"),
        ({"metric": "accuracy", "label_names": ["a", "a"]}, "duplicate label names"),
    ],
)
def test_task_spec_validation(kwargs: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        TaskDefinition(name="t", is_pair=False, **kwargs)


def test_from_dict_rejects_missing_and_unknown_keys() -> None:
    with pytest.raises(DataError, match="missing key"):
        TaskDefinition.from_dict({"name": "t", "metric": "accuracy", "is_pair": False})
    with pytest.raises(DataError, match="unknown key"):
        Example.from_dict({"text": "a", "label": 0, "lable": 1})


def test_task_data_rejects_labels_that_do_not_fit_the_head() -> None:
    spec = TaskDefinition("t", "accuracy", ["a", "b"], False)
    with pytest.raises(DataError, match="train example 1: label must be a class index in 0..1"):
        TaskData(spec, [Example("x", None, 0), Example("y", None, 2)], None)


# --------------------------------------------------------------------------- low-data split


def make_examples(n: int) -> list[Example]:
    return [Example(f"s{i}", None, i % 2) for i in range(n)]


def test_split_pinned_permutation() -> None:
    # random.Random(42).shuffle(list(range(10))) == [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]; if a
    # Python release ever changes this, published seeds would select other examples.
    examples = make_examples(10)
    train, dev = low_data_split(examples, 8, seed=42)
    assert [e.text for e in train] == ["s7", "s3", "s2", "s8", "s5", "s6"]
    assert [e.text for e in dev] == ["s9", "s4"]


@pytest.mark.parametrize(("size", "n_train", "n_dev"), [(100, 75, 25), (4, 3, 1), (10, 7, 3), (1000, 750, 250)])
def test_split_sizes(size: int, n_train: int, n_dev: int) -> None:
    train, dev = low_data_split(make_examples(1000), size, seed=1)
    assert (len(train), len(dev)) == (n_train, n_dev)


def test_split_none_keeps_everything_and_is_disjoint() -> None:
    examples = make_examples(37)
    train, dev = low_data_split(examples, None, seed=651)
    assert len(train) + len(dev) == 37
    names_train = {e.text for e in train}
    names_dev = {e.text for e in dev}
    assert not names_train & names_dev
    assert names_train | names_dev == {e.text for e in examples}


def test_split_is_deterministic_and_seed_dependent() -> None:
    examples = make_examples(200)
    first = low_data_split(examples, 100, seed=92)
    assert low_data_split(examples, 100, seed=92) == first
    assert low_data_split(examples, 100, seed=111) != first
    assert [e.text for e in examples] == [f"s{i}" for i in range(200)]  # input untouched


def test_split_sizes_are_nested_for_one_seed() -> None:
    examples = make_examples(500)
    small = low_data_split(examples, 100, seed=245)
    large = low_data_split(examples, 400, seed=245)
    assert {e.text for e in small[0] + small[1]} <= {e.text for e in large[0] + large[1]}


def test_split_custom_dev_fraction() -> None:
    train, dev = low_data_split(make_examples(30), 30, seed=0, dev_fraction=0.1)
    assert (len(train), len(dev)) == (27, 3)


@pytest.mark.parametrize(
    ("n", "size", "kwargs", "pattern"),
    [
        (10, 11, {}, "larger than the 10 training examples"),
        (10, 3, {}, "needs at least 4"),
        (3, None, {}, "only 3 example"),
        (10, 8, {"dev_fraction": 1.0}, "dev_fraction"),
        (10, 8, {"seed": "42"}, "seed must be an integer"),
        (10, 8.0, {}, "train_size must be an integer"),
    ],
)
def test_split_errors(n: int, size: object, kwargs: dict, pattern: str) -> None:
    arguments = {"seed": 42, **kwargs}
    with pytest.raises(DataError, match=pattern):
        low_data_split(make_examples(n), size, **arguments)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- real GLUE folder


@pytest.mark.parametrize(
    ("task", "n_train", "n_test", "train_counts"),
    [
        ("rte", 2490, 277, {0: 1249, 1: 1241}),
        ("cola", 8551, 1043, {0: 2528, 1: 6023}),
        ("mrpc", 3668, 408, {0: 1194, 1: 2474}),
        ("stsb", 5749, 1500, None),
    ],
)
def test_real_glue_row_counts(glue_dir: Path, task: str, n_train: int, n_test: int, train_counts: dict | None) -> None:
    data = load_task(task, glue_dir)
    assert len(data.train) == n_train
    assert data.test is not None and len(data.test) == n_test
    if train_counts is not None:
        counts = {label: sum(1 for e in data.train if e.label == label) for label in train_counts}
        assert counts == train_counts
    else:
        assert all(0.0 <= e.label <= 5.0 for e in data.train)


def test_real_qnli_has_no_train_split(glue_dir: Path) -> None:
    folder = glue_dir
    with pytest.raises(DataError, match="QNLI/train.tsv is missing.*can only be evaluated"):
        load_task("qnli", folder)
    assert len(read_glue_split("qnli", folder, "dev")) == 5463
