"""`make demo` as a new user meets it on a clone without data and without network: it completes
on the synthetic data, says so in one line and in the table, and writes every family's pictures."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from experiments import demo

TINY = ["--fusion-train-limit", "128", "--fusion-epochs", "1", "--gan-batches", "4", "--gan-epochs", "1",
        "--gan-width", "8", "--rl-max-epochs", "1"]


@pytest.fixture
def offline_without_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data root and cache, and every download refused as an offline machine would."""
    for name in ("data", "cache", "work"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("FUSEGEN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FUSEGEN_CACHE", str(tmp_path / "cache"))
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "work"


def test_demo_completes_offline_on_synthetic_data(offline_without_data: Path, capsys: pytest.CaptureFixture):
    out = offline_without_data / "runs" / "demo"
    code = demo.main(["--out", str(out), *TINY])
    printed = capsys.readouterr()
    assert code == 0, printed.out[-4000:] + printed.err[-4000:]

    rows = json.loads((out / "results.json").read_text())
    by_area = {area: [r for r in rows if r["capability"].lower().startswith(prefix)]
               for area, prefix in (("fusion", "fusion"), ("gan", "conditional gan"), ("rl", "rl"))}
    assert all(by_area.values()), [r["capability"] for r in rows]
    for r in by_area["fusion"] + by_area["gan"]:
        assert r["data"] == "synthetic (offline, no data found)"
    assert "synthetic (offline, no data found)" in (out / "results.md").read_text()
    # one line says it, before any training
    assert "download failed" in printed.out and "SYNTHETIC data instead" in printed.out

    # every family's pictures, in the documented place (<run>/pictures/), named in the table
    for area, rs in by_area.items():
        pictures = [Path(p) for r in rs for p in r["picture"].split(", ") if p]
        assert pictures, f"{area}: no picture in the table"
        for p in pictures:
            path = p if p.is_absolute() else offline_without_data / p
            assert path.is_file() and path.stat().st_size > 0 and "pictures" in path.parts, path
    accuracy = next(r["value"] for r in by_area["fusion"] if r["metric"] == "test accuracy")
    assert 0.0 <= accuracy <= 1.0

    # progress is visible, Lightning's chatter is not
    assert "epoch 1/1" in printed.out and "done in" in printed.out
    for noise in ("does not have many workers", "Tip:", "GPU available", "PossibleUserWarning",
                  "LightningCLI's args parameter"):
        assert noise not in printed.out + printed.err, noise


def test_demo_rejects_a_missing_real_data_request(offline_without_data: Path):
    with pytest.raises(SystemExit, match="--data real"):
        demo.main(["--only", "fusion", "--data", "real", "--out", str(offline_without_data / "out")])
