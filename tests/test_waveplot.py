"""The waveform pictures of docs/HARDWARE.md: recorded from the real gateware and drawn as PNG."""

import json

import pytest

from sim.waveplot import plot_wavedrom


def test_plot_wavedrom_writes_png(tmp_path):
    doc = {"signal": [{"name": "clk", "wave": "p...."}, {"name": "valid", "wave": "01.0."},
                      {"name": "data", "wave": "x==.x", "data": ["3,-1", "a long label that wraps"]}],
           "head": {"text": "t"}}
    path = plot_wavedrom(doc, tmp_path / "w.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("doc, msg", [({"signal": []}, "no signals"),
                                      ({"signal": [{"name": "a", "wave": "0h1"}]}, "unsupported")])
def test_plot_wavedrom_rejects_bad_documents(tmp_path, doc, msg):
    with pytest.raises(ValueError, match=msg):
        plot_wavedrom(doc, tmp_path / "w.png")


def test_quant_waves_cli_records_the_random_stream(tmp_path, capsys):
    from sim.quant.waves import main
    main(["rng", "--png", str(tmp_path)])
    doc = json.loads(capsys.readouterr().out)
    valid = next(s for s in doc["signal"] if s["name"] == "o.valid")["wave"]
    assert valid.startswith("0....1"), valid          # the documented 5-cycle latency after restart
    assert (tmp_path / "quant_rng_waveform.png").stat().st_size > 1000


def test_quant_waves_cli_rejects_unknown_unit():
    from sim.quant.waves import main
    with pytest.raises(SystemExit):
        main(["nonsense"])


def test_gemm_waveform_records_and_draws(tmp_path, monkeypatch):
    """`python -m sim.waveform`: the engine's VCD parses (no unnamed signal) and the figure is drawn."""
    import sim.waveform as wf
    monkeypatch.setattr(wf, "OUT_VCD", tmp_path / "gemm.vcd")
    monkeypatch.setattr(wf, "OUT_PNG", tmp_path / "gemm.png")
    cfg, a, b, c, cycles = wf.simulate()
    signals = wf.read_vcd(wf.OUT_VCD)
    assert not [name for name in signals if name.split(".")[-1].startswith("$")]   # pyvcd rejects these
    assert cycles == 26                                   # the count docs/HARDWARE.md describes
    wf.render(cfg)
    assert wf.OUT_PNG.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
