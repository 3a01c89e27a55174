"""The pieces both ``ccnet predict`` engines share: input collection (lists, URIs), the
options key, and which manifest rows a re-run may keep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccnet.inference.manifest import Manifest, input_stamp, is_done, make_row
from ccnet.inference.predict import Item, PredictConfig, collect


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    return path


def test_an_input_list_mixes_paths_file_uris_and_remote_uris(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _image(Path("a/x.png"))
    absolute = _image(tmp_path / "elsewhere" / "y.png")
    listing = Path("list.txt")
    listing.write_text(
        "# comment\n\na/x.png\n"
        f"{absolute.as_uri()}\n"
        "s3://bucket/street/2024/z.jpg\n"
        "gs://other/street/2024/z.jpg\n"
    )
    items = collect([], Path("out"), lists=[str(listing)])
    assert [(i.key, i.target.as_posix()) for i in items] == [
        ("a/x.png", "a/x"),
        (absolute.as_uri(), "y"),  # an absolute path: its name alone, as on the command line
        ("s3://bucket/street/2024/z.jpg", "bucket/street/2024/z"),
        ("gs://other/street/2024/z.jpg", "other/street/2024/z"),
    ]
    assert items[1].path == absolute and items[1].uri is None
    assert items[2].uri == "s3://bucket/street/2024/z.jpg" and items[2].path is None
    assert all(Item.from_json(item.to_json()) == item for item in items)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "names no inputs"), ("# only a comment\n", "names no inputs")],
)
def test_an_empty_input_list_is_an_error(tmp_path, text, message) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(text)
    with pytest.raises(ValueError, match=message):
        collect([], tmp_path / "out", lists=[str(listing)])
    with pytest.raises(ValueError, match="cannot read the input list"):
        collect([], tmp_path / "out", lists=[str(tmp_path / "missing.txt")])


def test_the_options_key_follows_what_changes_the_bytes() -> None:
    base = PredictConfig()
    assert PredictConfig().options_key() == base.options_key()
    for changed in (
        PredictConfig(output="png"),
        PredictConfig(alpha=0.3),
        PredictConfig(legend=True),
        PredictConfig(max_side=512),
        PredictConfig(load=base.load.replace(precision="bf16")),
    ):
        assert changed.options_key() != base.options_key(), changed


def test_which_rows_a_rerun_keeps(tmp_path) -> None:
    image = _image(tmp_path / "x.png")
    output = tmp_path / "out" / "x_mask.png"
    output.parent.mkdir()
    output.write_bytes(b"mask")
    stamp = input_stamp(image)
    common = {"key": "x.png", "source": "x.png", "target": "x", "options": "o", "worker": "w"}
    done = make_row(
        **common,
        input_stamp=stamp,
        kind="image",
        outputs=[str(output)],
        model_sha256="m",
        summary={"model": "ccnet-tiny", "size": [8, 8]},
    )
    failed = make_row(**common, input_stamp=stamp, error="x.png: not a decodable image")

    def hashes(kind: str) -> str:
        return "m"

    check = {"stamp": stamp, "target": "x", "options": "o", "model_hash": hashes}
    assert is_done(done, **check) and is_done(failed, **check)
    assert not is_done(None, **check)
    assert not is_done(done, **{**check, "options": "other"})
    assert not is_done(done, **{**check, "target": "y"})
    assert not is_done(done, **{**check, "model_hash": lambda kind: "another model"})
    assert not is_done(done, **{**check, "stamp": "0:0"})  # the input changed
    # a remote input that failed may have met a network error: tried again
    assert not is_done({**failed, "input_stamp": None}, **{**check, "stamp": None})
    output.unlink()
    assert not is_done(done, **check)  # its result is gone


def test_the_journal_survives_a_torn_last_line(tmp_path) -> None:
    manifest = Manifest(tmp_path)
    common = {"source": "s", "input_stamp": None, "target": "t", "options": "o", "worker": "w"}
    for key in ("a", "b", "a"):
        manifest.append(make_row(key=key, **common, error=f"{key} failed"))
    manifest.close()
    with (tmp_path / "manifest.jsonl").open("a") as handle:
        handle.write('{"input": "c", "sour')
    rows = manifest.previous()
    assert sorted(rows) == ["a", "b"]
    manifest.finish(rows.values())
    pq = pytest.importorskip("pyarrow.parquet")
    assert pq.read_table(tmp_path / "manifest.parquet").column("input").to_pylist() == ["a", "b"]
