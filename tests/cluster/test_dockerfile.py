"""The Dockerfile's rules, checked per build stage by parsing it (no Docker engine runs here).

The app image is python:3.11-slim with the CPU torch wheel; the predictor image is NVIDIA's
TensorRT-LLM 1.2.x release image with tensorrt-llm pinned to 1.2.*. Both final stages run as the
chart's non-root user, have a HEALTHCHECK against what the chart probes, and bake in no credentials;
.dockerignore keeps environments, build output, history and secrets out of the build context.
"""

from __future__ import annotations

import fnmatch
import json
import re
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


def test_predictor_pins_tensorrt_llm_1_2_and_keeps_the_base_torch(stages: dict[str, Stage]) -> None:
    runs = stages["predictor"].runs()
    assert re.search(r'pip install -c /tmp/constraints\.txt "tensorrt-llm==1\.2\.\*"', runs)
    assert "import torch; print(f'torch=={torch.__version__}')\" > /tmp/constraints.txt" in runs
    assert "if not d.startswith('torch')" in runs, "the project's torch pin must not replace the CUDA build"
    assert "v.startswith('1.2.')" in runs, "the build verifies the installed tensorrt_llm version"
    assert "download.pytorch.org" not in runs
    assert "HF_HUB_OFFLINE=1" in " ".join(stages["predictor"].values("ENV")), "weights come from /mnt/models only"


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
    assert sources == {"pyproject.toml", "README.md", "engine", "labeler", "training", "ui"}
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignored(source, ignore_patterns), f"{source} is copied but .dockerignore drops it"
