"""Installation facts a user relies on."""
import subprocess
import sys
from importlib.metadata import entry_points, version
from pathlib import Path


def test_our_kernels_do_not_shadow_hugging_face_kernels():
    """Our attention kernels are the import package `interp_kernels`: the name `kernels` belongs to Hugging
    Face's distribution, which transformers >= 5.25 requires and imports (a package of ours called
    `kernels` broke every `import transformers` and would overwrite theirs on install)."""
    code = ("import importlib.util, sys; from pathlib import Path; import interp_kernels, transformers; "
            "spec = importlib.util.find_spec('kernels'); "
            "print(Path(interp_kernels.__file__).parent.parent == Path(sys.argv[1]), "
            "spec is None or Path(spec.origin).parent != Path(sys.argv[1]) / 'kernels')")
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent.parent)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]
    assert not (Path(__file__).parent.parent / "kernels").exists()


def test_distribution_and_console_script():
    assert version("interp-workbench") == "0.1.0"
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("interp") == "interp.cli:main"


def test_every_package_of_the_tree_is_in_the_distribution():
    """A wheel (not only an editable install) must carry every package: setuptools' list names them all."""
    import tomllib

    root = Path(__file__).parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for top in ("interp_kernels", "interp", "circuits", "saes")
             for p in (root / top).rglob("__init__.py")}
    assert found == listed


def test_every_data_file_of_the_tree_is_in_the_distribution():
    """Files the code reads at run time (prompt sets, the fused CPU kernel's C source) must be package data."""
    import tomllib
    from fnmatch import fnmatch

    root = Path(__file__).parent.parent
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [p for top in ("interp_kernels", "interp", "circuits", "saes") for p in (root / top).rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert {"cpu_fused.c", "harmful.jsonl"} <= {p.name for p in files}
    for path in files:
        package, name = path.relative_to(root).parts[0], "/".join(path.relative_to(root).parts[1:])
        assert any(fnmatch(name, pattern) for pattern in data.get(package, [])), f"{path} is not package data"
