"""The README's five-minute tour, run as written (its atlas from `interp atlas --out atlas`)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _tour() -> str:
    """The first python block after the tour's heading, verbatim."""
    text = README.read_text()
    section = text[text.index("## A five-minute tour (Python)"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_tour_runs_as_written(smollm2, tmp_path, monkeypatch):
    """`smollm2`: the session cache holds the model the tour loads by name."""
    import interp
    from interp.cli import main

    code = _tour()
    assert 'interp.HeadAtlas.from_json("atlas/")' in code
    monkeypatch.chdir(tmp_path)  # the tour writes heads.json and reads atlas/ in the working folder
    assert main(["atlas", "--out", "atlas", "--n-texts", "2", "--max-tokens", "24",
                 "--sections", "head_types,sinks"]) == 0
    names: dict = {}
    exec(compile(code, str(README), "exec"), names)
    assert isinstance(names["atlas"], interp.HeadAtlas) and isinstance(names["table"], interp.HeadTable)
    assert (tmp_path / "heads.json").is_file()
