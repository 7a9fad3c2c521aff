"""eval/table.py: the paper-style table from results files, written into a README between markers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.table import END, START, V2_END, V2_START, format_macs, format_params, main

ROOT = Path(__file__).resolve().parent.parent
README = (f"# Project\n\nSome text.\n\n{START}\nan old table\n{END}\n\n## After\n\nmore text\n\n"
          f"{V2_START}\nan old V2 table\n{V2_END}\n\nthe end\n")


@pytest.fixture
def results(tmp_path):
    macs = [  # eval/macs.py: raw counts, one row per gate
        {"model": "sd15", "steps": 25, "gate": 5, "macs_baseline": 16_930_550_000_000, "macs_tgate": 9_873_000_000_000,
         "params_baseline": 859_520_964, "params_tgate": 815_557_796},
        {"model": "sd15", "steps": 25, "gate": 10, "macs_baseline": 16_930_550_000_000,
         "macs_tgate": 11_637_000_000_000, "params_baseline": 859_520_964, "params_tgate": 815_557_796},
        # TGATE-V2 rows (self-attention cached): the V2 table only; an LCM row at v1's setting: both tables
        {"model": "sdxl", "steps": 25, "gate": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2,
         "macs_baseline": 149_433_024_512_000, "macs_tgate": 95_988_672_102_400, "params_baseline": 2_567_463_684,
         "params_tgate": 2_021_793_284},
        {"model": "lcm_pixart", "steps": 4, "gate": 1, "sp_interval": 1, "fi_interval": 1, "warm_up": 0,
         "macs_baseline": 8_562_900_000_000, "macs_tgate": 7_622_950_000_000, "params_baseline": 611_349_152,
         "params_tgate": 462_584_480},
    ]
    latency = [
        {"model": "sd15", "device": "NVIDIA H100 80GB HBM3", "steps": 25, "gate": 10, "resolution": 512,
         "baseline_s": 1.2345, "tgate_s": 0.8, "speedup": 1.54},
        {"model": "sd21", "device": "cpu", "steps": 4, "gate": 2, "resolution": 32, "baseline_s": 0.5,
         "tgate_s": 0.4, "speedup": 1.25, "tiny": True},
        {"model": "pixart_sigma", "device": "cpu", "steps": 25, "gate": 15, "sp_interval": 3, "fi_interval": 1,
         "warm_up": 2, "resolution": 1024, "baseline_s": 60.0, "tgate_s": 40.0, "speedup": 1.5,
         "random_weights": True},
    ]
    (tmp_path / "macs.json").write_text(json.dumps(macs))
    (tmp_path / "latency.json").write_text(json.dumps(latency))
    runs = {
        "sd15_gate10": {"metric": "FID", "model": "sd15", "gate": 10, "tgate": True, "steps": 25, "n": 10000,
                        "resolution": 512, "fid": 20.5, "labels": []},
        "sd15_baseline_tiny": {"metric": "FID", "model": "sd15", "gate": None, "tgate": False, "steps": 3, "n": 5,
                               "resolution": 32, "fid": 123.456789, "tiny": True,
                               "labels": ["tiny", "unofficial Inception", "dims 64", "n=5"]},
        "sd15_baseline_toy": {"metric": "toy-FD", "model": "sd15", "gate": None, "steps": 25, "n": 10000,
                              "fid": 1.0, "labels": []},
    }
    for name, result in runs.items():
        (tmp_path / "fid" / name).mkdir(parents=True)
        (tmp_path / "fid" / name / "result.json").write_text(json.dumps(result))
    (tmp_path / "README.md").write_text(README)
    return tmp_path


def argv(folder, fid_glob=None):
    return ["--macs", str(folder / "macs.json"), "--latency", str(folder / "latency.json"),
            "--fid", fid_glob or str(folder / "fid" / "*" / "result.json"), "--readme", str(folder / "README.md")]


def table_row(text, name):
    line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def note(text, cell):
    marker = cell.split()[-1]
    return next(line for line in text.splitlines() if line.startswith(marker))


def test_counts_are_formatted_like_the_paper():
    assert format_macs(16_938_000_000_000) == "16.938T" and format_macs(338_611_000_000) == "338.611G"
    assert format_params(2_570_000_000) == "2.570B" and format_params(859_520_000) == "859.520M"


def test_table_puts_ours_beside_the_papers_between_the_markers(results, capsys):
    assert main(argv(results)) == 0
    text = (results / "README.md").read_text()
    before, rest = text.split(START)
    table, after = rest.split(END)
    assert before == README.split(START)[0]  # the rest is untouched (up to the V2 table's markers)
    assert after.split(V2_START)[0] == README.split(END)[1].split(V2_START)[0]
    assert "an old table" not in table

    baseline = table_row(table, "SD-1.5")
    assert baseline[1:7] == ["16.931T", "16.938T", "859.521M", "859.520M", "1.234", "7.032"]
    assert baseline[7].startswith("123.457 (tiny, unofficial Inception, dims 64, n=5, 3 steps, 32px)")  # labelled
    assert baseline[8] == "23.927"
    tgate = table_row(table, "SD-1.5 + TGATE")
    assert tgate[1:5] == ["9.873T (gate 5)<br>11.637T (gate 10)", "9.875T", "815.558M (gate 5)<br>815.558M (gate 10)",
                          "815.557M"]
    assert tgate[5:9] == ["0.800 (gate 10)", "4.313", "20.500 (gate 10)", "20.789"]
    assert table_row(table, "SD-2.1")[5] == "0.500 (tiny, 4 steps, 32px)"
    assert "NVIDIA H100 80GB HBM3" in table

    sdxl = table_row(table, "SDXL + TGATE")
    assert sdxl[2] == "84.438T" and sdxl[1].startswith("-")  # the paper's number, no invented one of ours
    assert "no eval/macs.py measurement of this model yet" in note(table, sdxl[1])
    assert "no eval/fid.py result for this model and setting yet" in note(table, table_row(table, "SD-2.1 + TGATE")[7])
    assert table_row(table, "SD-2.1")[7] == table_row(table, "SD-2.1 + TGATE")[7]  # one note per reason

    assert main(argv(results)) == 0  # rendering again changes nothing
    assert (results / "README.md").read_text() == text
    assert "written into" in capsys.readouterr().out


def test_v2_table_puts_v2_rows_beside_the_v2_readme_table(results):
    assert main(argv(results)) == 0
    text = (results / "README.md").read_text()
    v1_table = text.split(START)[1].split(END)[0]
    v2_table = text.split(V2_START)[1].split(V2_END)[0]
    assert "an old V2 table" not in v2_table and text.endswith(f"{V2_END}\n\nthe end\n")
    sdxl = table_row(v2_table, "SDXL + TGATE")
    assert sdxl[1:3] == ["95.989T (gate 10, sp 5/fi 1/wu 2)", "95.988T"]
    assert table_row(v2_table, "SDXL")[1:3] == ["149.433T", "149.438T"]
    assert table_row(v1_table, "SDXL + TGATE")[1].startswith("-")  # a V2 row is not a v1 measurement
    assert table_row(v1_table, "SDXL")[1] == "149.433T"  # the stock run is the same in both tables
    lcm = "LCM (PixArt-Alpha) + TGATE"
    assert table_row(v2_table, lcm)[1:3] == table_row(v1_table, lcm)[1:3] == ["7.623T (gate 1)", "7.623T"]
    sigma = table_row(v2_table, "PixArt-Sigma + TGATE")
    assert sigma[3:5] == ["40.000 (gate 15, sp 3/fi 1/wu 2, random weights)", "36.449"]
    assert sigma[1].startswith("-") and sigma[2] == "74.420T" and sigma[6] == "32.927"
    assert "at a TGATE-V2 setting yet" in note(v2_table, sigma[1])
    assert "| PixArt-Sigma" not in v1_table  # the v1 table has no Sigma rows


def test_missing_sources_show_a_dash_and_the_reason(results, tmp_path):
    (results / "macs.json").unlink()
    assert main(argv(results, fid_glob=str(tmp_path / "nothing" / "*.json"))) == 0
    table = (results / "README.md").read_text()
    row = table_row(table, "SD-1.5 + TGATE")
    assert row[1].startswith("-") and row[3].startswith("-") and row[7].startswith("-")
    assert "macs.json not found: run `python eval/macs.py`" in note(table, row[1])
    assert "no eval/fid.py result.json matches" in note(table, row[7])
    assert row[2] == "9.875T" and row[8] == "20.789"


@pytest.mark.parametrize("readme, missing", [("# no markers\n", START), (f"{START}\n{END}\n", V2_START)])
def test_a_readme_without_markers_is_a_clear_error(results, capsys, readme, missing):
    (results / "README.md").write_text(readme)
    assert main(argv(results)) == 2
    assert missing in capsys.readouterr().err
    assert (results / "README.md").read_text() == readme


def test_script_prints_from_the_repository_root(tmp_path):
    result = subprocess.run([sys.executable, "eval/table.py", "--print-only", "--macs", str(tmp_path / "none.json")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| SD-1.5 + TGATE |" in result.stdout and "none.json not found" in result.stdout
    assert "| PixArt-Sigma + TGATE |" in result.stdout  # the V2 table too


def test_deepcache_rows_go_in_their_own_table_beside_the_v2_readmes(results):
    macs = json.loads((results / "macs.json").read_text())
    deepcache = {"model": "sdxl", "steps": 25, "sp_interval": 1, "fi_interval": 1, "warm_up": 0,
                 "params_baseline": 2_567_463_684, "params_tgate": 2_021_793_284}
    macs += [  # eval/macs.py's DeepCache rows: macs_baseline is DeepCache alone
        {**deepcache, "gate": 13, "macs_baseline": 57_888_459_980_800, "macs_tgate": 43_866_188_677_120,
         "deepcache_interval": 3, "deepcache_branch": 1},
        {**deepcache, "gate": 10, "macs_baseline": 55_365_140_480_000, "macs_tgate": 38_625_838_694_400,
         "deepcache_interval": 3, "deepcache_branch": 0},
    ]
    (results / "macs.json").write_text(json.dumps(macs))
    (results / "fid" / "sdxl_gate13_dc3_br1").mkdir(parents=True)
    (results / "fid" / "sdxl_gate13_dc3_br1" / "result.json").write_text(json.dumps(
        {"metric": "FID", "model": "sdxl", "gate": 13, "tgate": True, "steps": 25, "n": 10000, "resolution": 1024,
         "fid": 24.0, "labels": [], "deepcache_interval": 3, "deepcache_branch": 1}))
    assert main(argv(results)) == 0
    text = (results / "README.md").read_text()
    v1_table = text.split(START)[1].split(END)[0]
    v2_block = text.split(V2_START)[1].split(V2_END)[0]
    alone = table_row(v2_block, "DeepCache (SDXL)")
    assert alone[1:3] == ["55.365T (dc 3/br 0)<br>57.888T (dc 3/br 1)", "57.888T"]
    assert alone[3:7] == [alone[3], "19.931", alone[5], "25.678"] and alone[3].startswith("-")
    both = table_row(v2_block, "DeepCache (SDXL) + TGATE")
    assert both[1:3] == ["38.626T (gate 10, dc 3/br 0)<br>43.866T (gate 13, dc 3/br 1)", "43.868T"]
    assert both[4] == "14.666" and both[5:7] == ["24.000 (gate 13, dc 3/br 1)", "24.511"]
    assert "branch 1 and gate 13" in v2_block
    # DeepCache measurements never stand in for the stock or TGATE cells of the other tables
    assert table_row(v1_table, "SDXL")[1] == table_row(v2_block, "SDXL")[1] == "149.433T"
    assert table_row(v1_table, "SDXL + TGATE")[1].startswith("-")
    assert table_row(v2_block, "SDXL + TGATE")[1] == "95.989T (gate 10, sp 5/fi 1/wu 2)"
    assert table_row(v1_table, "SDXL + TGATE")[7].startswith("-")
