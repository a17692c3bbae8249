"""fbench.metrics against plain numpy re-computations; fbench.report tables, plots and gathering."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fbench import metrics as M
from fbench import report as R


@pytest.fixture
def va():
    rng = np.random.default_rng(7)
    label = rng.uniform(-1, 1, 300)
    pred = 0.6 * label + 0.2 + rng.normal(0, 0.3, 300)
    return label, pred


def test_pcc_ccc_rmse_sagr_match_numpy(va):
    x, y = va
    assert M.pcc(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    # Lin's CCC with population (ddof=0) statistics, written out longhand.
    n = len(x)
    cov = np.sum((x - x.mean()) * (y - y.mean())) / n
    lin = 2 * cov / (np.sum((x - x.mean()) ** 2) / n + np.sum((y - y.mean()) ** 2) / n + (x.mean() - y.mean()) ** 2)
    assert M.ccc(x, y) == pytest.approx(lin, abs=1e-12)
    # Sample (ddof=1) statistics give a different number: the population choice matters.
    sample = 2 * np.cov(x, y)[0, 1] / (x.var(ddof=1) + y.var(ddof=1) + (x.mean() - y.mean()) ** 2)
    assert abs(M.ccc(x, y) - sample) > 1e-5
    assert M.rmse(x, y) == pytest.approx(np.sqrt(np.mean((x - y) ** 2)), abs=1e-12)
    assert M.sagr(x, y) == pytest.approx(np.mean(np.sign(x) == np.sign(y)), abs=1e-12)
    # EMOCA's SAGR compares signs: 0 agrees only with 0, so a zero label vs a small negative disagrees.
    assert M.sagr([0.0, 0.5, -0.5, 0.0], [-0.1, 0.2, 0.1, 0.0]) == pytest.approx(0.5)
    assert M.ccc(x, x) == pytest.approx(1.0) and M.ccc(x, x + 0.5) < 1.0  # a bias is penalised by CCC only
    assert M.pcc(x, x + 0.5) == pytest.approx(1.0)
    assert set(M.va_metrics("v", x, y)) == {"v_pcc", "v_ccc", "v_rmse", "v_sagr"}
    with pytest.raises(ValueError):
        M.pcc(x, y[:-1])


def test_classification_metrics_match_loops():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 8, 500)
    pred = np.where(rng.random(500) < 0.6, label, rng.integers(0, 8, 500))
    label[label == 7] = 6  # class 7 absent from the labels (still predicted sometimes)
    cm = M.confusion_matrix(label, pred, 8)
    loops = np.zeros((8, 8), int)
    for a, b in zip(label, pred):
        loops[a, b] += 1
    np.testing.assert_array_equal(cm, loops)
    assert M.accuracy(label, pred) == pytest.approx(np.mean(label == pred))
    per = M.per_class_accuracy(label, pred, 8)
    for c in range(7):
        assert per[c] == pytest.approx(np.mean(pred[label == c] == c))
    assert np.isnan(per[7])
    assert M.macro_accuracy(label, pred, 8) == pytest.approx(np.mean([np.mean(pred[label == c] == c) for c in range(7)]))
    with pytest.raises(ValueError):
        M.confusion_matrix([0, 9], [0, 1], 8)


def test_distance_stats_pooled():
    rng = np.random.default_rng(0)
    parts = [rng.exponential(1.0, n) for n in (10, 200, 37)]
    s = M.distance_stats(parts)
    allv = np.concatenate(parts)
    assert s == {"mean": pytest.approx(allv.mean()), "median": pytest.approx(np.median(allv)),
                 "max": pytest.approx(allv.max()), "n": 247}
    with pytest.raises(ValueError):
        M.distance_stats(np.array([1.0, np.nan]))


def _table():
    return R.Table("bench", ["mean_mm", "n_items"], rows=[{"method": "a_b", "mean_mm": 1.23456, "n_items": 3}],
                   reference=[{"method": "SMIRK", "mean_mm": 1.28}])


def test_tables_keep_reference_apart():
    t = _table()
    md = R.to_markdown(t)
    body, ref = md.split("Published (reference only)")
    assert "| a_b | 1.235 | 3 |" in body and "SMIRK" not in body
    assert "| SMIRK | 1.280 |  |" in ref
    csv_lines = R.to_csv(t).splitlines()
    assert csv_lines == ["kind,method,mean_mm,n_items", "result,a_b,1.234560,3", "reference,SMIRK,1.280000,"]
    tex = R.to_latex(t)
    assert r"a\_b & 1.235 & 3 \\" in tex and tex.index("a\\_b") < tex.index("emph") < tex.index("SMIRK")


def test_plots_write_png(tmp_path):
    x = np.linspace(0, 5, 11)
    p = R.plot_cumulative_error({"m": (x, R.cumulative_curve(np.array([0.5, 1.0, 6.0]), x))}, tmp_path / "c.png")
    q = R.plot_confusion_matrix(np.eye(3, dtype=int) * 4, ["a", "b", "c"], tmp_path / "cm.png")
    for path in (p, q):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_allclose(R.cumulative_curve(np.array([0.5, 1.0, 6.0]), np.array([0.0, 1.0, 5.0, 6.0])),
                               [0, 2 / 3, 2 / 3, 1])


def test_gather_results(tmp_path):
    for method, mean in (("oracle", 0.001), ("mean", 2.5)):
        d = tmp_path / "multiface" / method
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"benchmark": "multiface", "method": method, "synthetic": True,
                                                    "seconds": 3.0, "mean_mm": mean, "n_items": 4,
                                                    "per_subject": {"x": 1}}))
        (d / "reference.json").write_text(json.dumps({"title": "SMIRK supp. Table 2", "columns": ["mean_mm", "n_items"],
                                                      "rows": [{"method": "SMIRK", "mean_mm": 1.28}]}))
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "metrics.json").write_text("{not json")
    tables = R.gather_results(tmp_path)
    assert len(tables) == 1
    t = tables[0]
    assert t.title == "multiface (synthetic data)" and t.columns == ["mean_mm", "n_items"]
    assert [r["method"] for r in t.rows] == ["mean", "oracle"] and t.reference == [{"method": "SMIRK", "mean_mm": 1.28}]
    paths = R.write_tables(tables, tmp_path / "report.md")
    assert "SMIRK supp. Table 2" in paths["markdown"].read_text() and paths["latex"].is_file()
