"""bench.live_stream runs end to end on tiny inputs; its numbers are not asserted on."""

from __future__ import annotations


def test_live_stream_stability_part_runs() -> None:
    from bench.live_stream import main

    results = main(["--parts", "stability", "--clips", "1", "--clip-frames", "3"])
    ways = [row["way"] for row in results["stability"]]
    assert ways[0].startswith("2D") and "live 3D, causal" in ways
    assert all(0 <= row["miou_pct"] <= 100 for row in results["stability"])
