"""GLUE loading from the standard file layout (fixtures in tests/fixtures/glue) and the task metrics."""

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from nxm_kernels.glue import GLUE_TASKS, encode, glue_metrics, load_glue, task_info

from train_helpers import FIXTURES, fixture_tokenizer

EXPECTED = {  # task: (train rows, dev rows, has text_b)
    "cola": (40, 24, False), "sst2": (40, 24, False), "mrpc": (40, 24, True), "stsb": (40, 24, True),
    "qqp": (40, 24, True), "mnli": (40, 24, True), "mnli-mm": (40, 24, True), "qnli": (40, 24, True),
    "rte": (40, 24, True), "wnli": (40, 24, True),
}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_every_task_loads_from_the_standard_layout(task):
    n_train, n_dev, pair = EXPECTED[task]
    t = task_info(task)
    for split, n in (("train", n_train), ("dev", n_dev)):
        d = load_glue(task, split, FIXTURES)
        assert len(d) == n and (d.text_b is not None) == pair
        assert all(isinstance(s, str) and s.strip() for s in d.text_a)
        if t.is_regression:
            assert all(0.0 <= v <= 5.0 for v in d.labels)
        else:
            assert set(d.labels) <= set(range(t.num_labels)) and len(set(d.labels)) > 1


def test_columns_and_labels_are_read_by_name():
    mnli = load_glue("MNLI-m", "dev", FIXTURES)
    first = (FIXTURES / "MNLI" / "dev_matched.tsv").read_text().splitlines()[1].split("\t")
    assert mnli.text_a[0] == first[8] and mnli.text_b[0] == first[9]
    assert mnli.labels[0] == ("entailment", "neutral", "contradiction").index(first[-1])
    mm = load_glue("mnli_mismatched", "dev", FIXTURES)
    assert mm.text_a != mnli.text_a
    cola = load_glue("CoLA", "train", FIXTURES)
    row = (FIXTURES / "CoLA" / "train.tsv").read_text().splitlines()[0].split("\t")
    assert cola.text_a[0] == row[3] and cola.labels[0] == int(row[1])
    mrpc = load_glue("mrpc", "train", FIXTURES)
    row = (FIXTURES / "MRPC" / "train.tsv").read_text().splitlines()[1].split("\t")
    assert (mrpc.text_a[0], mrpc.text_b[0], mrpc.labels[0]) == (row[3], row[4], int(row[0]))
    rte = load_glue("rte", "dev", FIXTURES)
    row = (FIXTURES / "RTE" / "dev.tsv").read_text().splitlines()[1].split("\t")
    assert rte.labels[0] == ("entailment", "not_entailment").index(row[3])
    test = load_glue("cola", "test", FIXTURES)
    assert test.labels is None and len(test) == 8
    assert load_glue("sst2", "dev", FIXTURES / "SST-2").text_a == load_glue("sst2", "dev", FIXTURES).text_a


def test_bad_input_is_reported(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        task_info("imdb")
    with pytest.raises(ValueError, match="split"):
        load_glue("sst2", "validation_x", FIXTURES)
    with pytest.raises(FileNotFoundError, match="SST-2/train.tsv"):
        load_glue("sst2", "train", tmp_path)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_glue("sst2", "train", tmp_path / "nope")
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\ngood film .\t1\nbad film .\tmaybe\n")
    with pytest.raises(ValueError, match=r"train.tsv:3: label must be one of"):
        load_glue("sst2", "train", tmp_path)
    (tmp_path / "SST-2" / "dev.tsv").write_text("text\tlabel\ngood film .\t1\n")
    with pytest.raises(ValueError, match="header must contain"):
        load_glue("sst2", "dev", tmp_path)


def test_metrics_are_the_standard_ones():
    rng = np.random.default_rng()
    ref = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.8, ref, 1 - ref)
    # Hand-computed reference values (not the library under test).
    tp = int(((pred == 1) & (ref == 1)).sum())
    fp = int(((pred == 1) & (ref == 0)).sum())
    fn = int(((pred == 0) & (ref == 1)).sum())
    tn = int(((pred == 0) & (ref == 0)).sum())
    acc = (tp + tn) / 200
    f1 = 2 * tp / (2 * tp + fp + fn)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    m = glue_metrics("mrpc", pred, ref)
    assert m["accuracy"] == pytest.approx(acc) and m["f1"] == pytest.approx(f1) and m["main"] == m["f1"]
    m = glue_metrics("cola", pred, ref)
    assert m["matthews_correlation"] == pytest.approx(mcc) and m["main"] == m["matthews_correlation"]
    logits = np.stack([1 - pred, pred], 1).astype(float) + rng.random((200, 2)) * 0.1
    assert glue_metrics("sst2", logits, ref)["accuracy"] == pytest.approx(acc)
    x = rng.random(50) * 5
    y = x + rng.normal(0, 0.5, 50)
    m = glue_metrics("stsb", y[:, None], x)
    assert m["pearson"] == pytest.approx(pearsonr(y, x)[0]) and m["spearman"] == pytest.approx(spearmanr(y, x)[0])
    with pytest.raises(ValueError, match="equal length"):
        glue_metrics("sst2", pred[:5], ref)
    assert set(GLUE_TASKS) >= {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli-mm", "qnli", "rte"}


def test_encode_pairs_and_labels():
    tok = fixture_tokenizer()
    d = load_glue("qqp", "dev", FIXTURES)
    feats = encode(d, tok, max_length=16)
    assert len(feats) == len(d) and all(len(f["input_ids"]) <= 16 for f in feats)
    assert feats[0]["labels"] == d.labels[0] and 1 in feats[0]["token_type_ids"]  # second segment present
    assert tok.unk_token_id not in feats[0]["input_ids"]  # the fixture vocabulary covers the text
    with pytest.raises(ValueError, match="max_length"):
        encode(d, tok, max_length=2)


@pytest.mark.parametrize("task,split,hub_split", [
    ("sst2", "dev", "validation"), ("sst2", "eval", "validation"), ("sst2", "train", "train"),
    ("sst2", "test", "test"), ("mnli", "dev", "validation_matched"), ("mnli-mm", "validation", "validation_mismatched"),
    ("mnli", "test", "test_matched"), ("mnli-mm", "test", "test_mismatched"), ("mnli", "train", "train"),
])
def test_hub_split_names(task, split, hub_split, monkeypatch):
    import sys
    import types

    calls = []

    def load_dataset(path, config, split):
        calls.append((path, config, split))
        t = task_info(task)
        rows = {f: ["a", "b"] for f in t.hub[2:]}
        rows["label"] = [0, 1]
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = load_glue(task, split)
    assert calls == [("nyu-mll/glue", task_info(task).hub[0], hub_split)]
    assert len(data) == 2 and (data.labels is None) == (split == "test")
