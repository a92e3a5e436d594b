"""The Dockerfile's rules, checked per build stage by parsing it (no Docker engine runs here).

The app image is python:3.11-slim with the CPU torch wheel; the predictor image is NVIDIA's
TensorRT-LLM 1.2.x release image with tensorrt-llm pinned to 1.2.*, installed first so that its pinned
stack wins, then only what that stack lacks, then the project with --no-deps. Both final stages run as the
chart's non-root user, have a HEALTHCHECK against what the chart probes, and bake in no credentials;
.dockerignore keeps environments, build output, history and secrets out of the build context.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|ACCESS_KEY|CREDENTIAL", re.I)
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]*:[^/\s@]+@")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]

    def runs(self) -> str:
        return "\n".join(self.values("RUN"))


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(str(REPO / "Dockerfile"))
    bases = iter(parser.parent_images)  # FROM images with the ARG defaults substituted
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for entry in parser.structure:
        if entry["instruction"] == "FROM":
            name = entry["value"].split()[-1] if " AS " in entry["value"].upper() else str(len(found))
            current = found[name] = Stage(name, next(bases))
        elif current is not None and entry["instruction"] != "COMMENT":
            current.instructions.append((entry["instruction"], entry["value"]))
    return found


@pytest.fixture(scope="module")
def chart_values() -> dict:
    return yaml.safe_load((REPO / "helm" / "llava-labeler" / "values.yaml").read_text())


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent directory decides; `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_stages_build_on_the_required_bases(stages: dict[str, Stage]) -> None:
    assert list(stages) == ["app-build", "app", "predictor"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stages["app-build"].base)
    assert stages["app"].base == stages["app-build"].base
    assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt-llm/release:1\.2\.\d+", stages["predictor"].base)


def test_app_installs_the_cpu_torch_wheel_before_the_project(stages: dict[str, Stage]) -> None:
    runs = stages["app-build"].values("RUN")
    torch_step = next(i for i, run in enumerate(runs) if "torch==" in run)
    assert re.search(r"pip install --index-url https://download\.pytorch\.org/whl/cpu torch==2\.13\.0\b", runs[torch_step])
    project_step = next(i for i, run in enumerate(runs) if re.search(r"pip install --no-deps /src\b", run))
    requirements_step = next(i for i, run in enumerate(runs) if "-r /tmp/requirements.txt" in run)
    assert torch_step < requirements_step < project_step
    # The runtime stage takes only the built environment, not the build tools or the sources.
    assert stages["app"].values("COPY") == ["--from=app-build /opt/venv /opt/venv"]


def _step(runs: list[str], pattern: str) -> int:
    matches = [i for i, run in enumerate(runs) if re.search(pattern, run)]
    assert len(matches) == 1, f"expected one RUN matching {pattern!r}, found {len(matches)}"
    return matches[0]


def test_predictor_installs_tensorrt_llm_first_and_keeps_its_stack(stages: dict[str, Stage]) -> None:
    """tensorrt-llm 1.2 pins transformers 4.57.1, xgrammar 0.1.25, numpy<2, fastapi<=0.121.3 and torch 2.9,
    which pyproject.toml contradicts: one resolve of both cannot succeed, so TensorRT-LLM installs alone
    (base torch held), its pins become the constraints, only what the image lacks is added under them,
    and the project goes in with --no-deps."""
    runs = stages["predictor"].values("RUN")
    trtllm = _step(runs, r'pip install -c /tmp/torch\.txt "tensorrt-llm==1\.2\.\*"')
    assert "import torch; print(f'torch=={torch.__version__}')\" > /tmp/torch.txt" in runs[trtllm], (
        "the base's CUDA torch must be held while tensorrt-llm installs"
    )
    assert "-r " not in runs[trtllm], "tensorrt-llm installs alone: nothing of pyproject.toml joins its resolve"
    assert "v.startswith('1.2.')" in runs[trtllm], "the build verifies the installed tensorrt_llm version"
    pins = _step(runs, r"> /tmp/trtllm-pins\.txt")
    freeze = _step(runs, r"pip list --format=freeze > /tmp/trtllm-stack\.txt")
    extras = _step(runs, r"pip install -c /tmp/trtllm-pins\.txt -r /tmp/requirements\.txt")
    project = _step(runs, r"pip install --no-deps /src\b")
    assert trtllm <= pins and trtllm <= freeze and max(pins, freeze) < extras < project
    assert "requires('tensorrt_llm')" in runs[pins] and "'torch==' + version('torch')" in runs[pins]
    installs = [run for run in runs if "pip install" in run]
    assert len(installs) == 3, "only the three steps install anything"
    assert "--no-deps" not in runs[extras] and "--force-reinstall" not in runs[extras]
    assert "v.startswith('1.2.')" in runs[project], "still 1.2.x after everything else went in"
    assert re.search(r"import engine\.predictor, engine\.backends\.trtllm", runs[project]), "smoke-test the serving path"
    assert "llava-labeler serve --help" in runs[project]
    assert "download.pytorch.org" not in "\n".join(runs)
    assert "HF_HUB_OFFLINE=1" in " ".join(stages["predictor"].values("ENV")), "weights come from /mnt/models only"


def _python_script(run: str, output: str) -> str:
    """The `python3 -c "..."` of a RUN step that writes `output`."""
    command = next(part for part in run.split(" && ") if f"> {output}" in part).split(f" > {output}")[0]
    argv = shlex.split(command)
    assert argv[:2] == ["python3", "-c"], argv[:2]
    return argv[2]


def test_predictor_constraints_are_tensorrt_llms_declared_pins(stages: dict[str, Stage]) -> None:
    """Run the stage's pin extraction, with an installed package (kserve: extras, markers) standing in."""
    runs = stages["predictor"].values("RUN")
    script = _python_script(runs[_step(runs, r"> /tmp/trtllm-pins\.txt")], "/tmp/trtllm-pins.txt")
    out = subprocess.run([sys.executable, "-c", script.replace("'tensorrt_llm'", "'kserve'")],
                         capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    from importlib.metadata import version

    assert out[-2:] == [f"torch=={version('torch')}", f"tensorrt-llm=={version('kserve')}"]
    assert any(re.fullmatch(r"uvicorn[<>=!~][^\[]*", line) for line in out), "uvicorn[standard]'s specifier, extras dropped"
    assert all("[" not in line and "@" not in line and "extra" not in line for line in out), (
        "pip refuses extras and URLs in constraints"
    )


def test_predictor_adds_only_what_the_tensorrt_llm_stack_lacks(stages: dict[str, Stage], tmp_path: Path) -> None:
    """Run the stage's requirement filter on pyproject.toml and a stand-in for TensorRT-LLM 1.2's stack."""
    runs = stages["predictor"].values("RUN")
    script = _python_script(runs[_step(runs, r"> /tmp/requirements\.txt")], "/tmp/requirements.txt")
    stack = tmp_path / "trtllm-stack.txt"
    stack.write_text("\n".join([
        "tensorrt_llm==1.2.0", "torch==2.9.0a0+50eac811a6.nv25.10", "transformers==4.57.1", "xgrammar==0.1.25",
        "numpy==1.26.4", "huggingface_hub==0.36.2", "tokenizers==0.22.2", "safetensors==0.6.2", "fastapi==0.121.3",
        "starlette==0.49.1", "pydantic==2.12.4", "pydantic-settings==2.11.0", "Pillow==12.0.0", "jsonschema==4.25.1",
        "prometheus_client==0.23.1", "accelerate==1.11.0", "peft==0.17.1", "httpx==0.28.1", "fsspec==2024.9.0",
        "etcd3 @ git+https://github.com/kragniz/python-etcd3.git",
    ]) + "\n")  # fmt: skip
    script = script.replace("/tmp/trtllm-stack.txt", str(stack)).replace("/src/pyproject.toml", str(REPO / "pyproject.toml"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    names = {re.match(r"[A-Za-z0-9._-]+", line).group().lower() for line in out}
    assert "kserve==0.19.*" in out, "kserve 0.20+ needs starlette>=1.0.1; TensorRT-LLM 1.2's fastapi needs <0.51"
    for kept in ("transformers", "xgrammar", "numpy", "huggingface-hub", "fastapi", "pydantic", "pillow", "fsspec"):
        assert kept not in names, f"{kept}: TensorRT-LLM's version must win, not pyproject.toml's"
    assert "torch" not in names and "streamlit" not in names
    for needed in ("typer", "sqlalchemy", "alembic", "psycopg2-binary", "celery", "kubernetes"):
        assert needed in names, f"{needed} is missing from the predictor/retrain image"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(out) - {"kserve==0.19.*"} <= set(pyproject), "the other extras keep pyproject.toml's specifiers"


@pytest.mark.parametrize("stage", ["app", "predictor"])
def test_final_stages_run_as_the_charts_non_root_user(stages: dict[str, Stage], chart_values: dict, stage: str) -> None:
    uid = chart_values["podSecurityContext"]["runAsUser"]
    user = stages[stage].values("USER")[-1]
    assert user == f"{uid}:{chart_values['podSecurityContext']['runAsGroup']}", user
    assert f"useradd --system --uid {uid}" in stages[stage].runs(), "the user must exist in the image"
    last_user = max(i for i, (name, _) in enumerate(stages[stage].instructions) if name == "USER")
    assert all(name not in ("RUN", "COPY", "ADD") for name, _ in stages[stage].instructions[last_user:]), (
        "the non-root USER must come after the last build step"
    )
    assert json.loads(stages[stage].values("ENTRYPOINT")[-1]) == ["llava-labeler"]


def test_healthchecks_probe_what_the_chart_probes(stages: dict[str, Stage], chart_values: dict) -> None:
    (app_check,) = stages["app"].values("HEALTHCHECK")
    app_env = " ".join(stages["app"].values("ENV"))
    assert f"HEALTHCHECK_URL=http://127.0.0.1:{chart_values['workers']['metricsPort']}/metrics" in app_env
    assert "os.environ['HEALTHCHECK_URL']" in app_check
    (predictor_check,) = stages["predictor"].values("HEALTHCHECK")
    assert f"http://127.0.0.1:{chart_values['predictor']['port']}/v2/health/live" in predictor_check
    for check in (app_check, predictor_check):
        assert re.search(r"--start-period=\d+[sm]", check) and "CMD [" in check


def test_no_credentials_are_baked_in(stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        for name, value in stage.instructions:
            if name in ("ENV", "ARG"):
                keys = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", value)
                assert not [k for k in keys if SECRET_NAME.search(k)], f"{stage.name}: {name} {value}"
            assert not URL_WITH_PASSWORD.search(value), f"{stage.name}: {name} carries a URL with a password"
            if name in ("COPY", "ADD"):
                sources = [word for word in value.split()[:-1] if not word.startswith("--")]
                assert "." not in sources and "./" not in sources, f"{stage.name} copies the whole context"
                assert not any(s.startswith(("http://", "https://")) for s in sources), "no remote ADD"
                assert not any(".env" in s or s.endswith((".pem", ".key")) for s in sources)


def test_dockerignore_keeps_the_context_small_and_clean(ignore_patterns: list[str]) -> None:
    for path in (
        ".venv/bin/python", "build/tiny-model/config.json", ".git/HEAD", "test-artifacts/review.png",
        ".env", "engine/__pycache__/cli.cpython-311.pyc", "deploy/tls.key",
    ):  # fmt: skip
        assert dockerignored(path, ignore_patterns), f"{path} would be sent to the Docker daemon"


def test_everything_the_dockerfile_copies_is_in_the_context(stages: dict[str, Stage], ignore_patterns: list[str]) -> None:
    sources = {
        source
        for stage in stages.values()
        for value in stage.values("COPY")
        if not value.startswith("--from")
        for source in value.split()[:-1]
    }
    assert sources == {"pyproject.toml", "README.md", "engine", "labeler", "training", "ui", "entrypoints"}
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignored(source, ignore_patterns), f"{source} is copied but .dockerignore drops it"
