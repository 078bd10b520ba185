"""The GitHub workflows say what the docs say: publish.yml publishes one package only from its tag,
with PyPI trusted publishing confined to the publish job; ci.yml tests Python 3.10-3.12 with the
pinned ruff and runs each package against the lowest core its range allows."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
PUBLISH_ACTION = "pypa/gh-action-pypi-publish"


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def uses(job: dict) -> list[str]:
    return [step["uses"].split("@")[0] for step in steps(job) if "uses" in step]


def permissions(node: dict) -> dict:
    value = node.get("permissions", {})
    if isinstance(value, str):  # "read-all" / "write-all"
        return {"*": value}
    return value or {}


@pytest.fixture(scope="module")
def publish() -> dict:
    return load("publish.yml")


def test_every_workflow_parses_and_has_jobs():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        data = load(path.name)
        assert data.get("jobs"), f"{path.name}: no jobs"
        assert data["on"], f"{path.name}: no trigger"


def test_publish_runs_only_on_package_tags(publish):
    assert set(publish["on"]) == {"push"}, f"publish.yml triggers: {publish['on']}"
    push = publish["on"]["push"]
    assert set(push) == {"tags"}, "publish.yml must run on tags only (no branches, no pull requests)"
    assert push["tags"] and all(pattern.startswith("*-v") for pattern in push["tags"]), push["tags"]


def test_id_token_only_in_the_publish_job(publish):
    assert "id-token" not in permissions(publish), "the workflow-level permissions must not grant id-token"
    assert permissions(publish).get("contents") == "read"
    holders = [name for name, job in publish["jobs"].items() if "id-token" in permissions(job)]
    assert holders == ["publish"], f"id-token granted to {holders}"
    assert permissions(publish["jobs"]["publish"]) == {"id-token": "write"}
    for name, job in load("ci.yml")["jobs"].items():
        assert "id-token" not in permissions(job), f"ci.yml job {name} asks for id-token"


def test_publish_job_uploads_the_checked_build_and_runs_no_repository_code(publish):
    job = publish["jobs"]["publish"]
    assert "build" in (job["needs"] if isinstance(job["needs"], list) else [job["needs"]])
    assert uses(job) == ["actions/download-artifact", PUBLISH_ACTION], uses(job)
    assert not any("run" in step for step in steps(job)), "the job holding the id-token runs no shell commands"
    target = next(step for step in steps(job) if step["uses"].startswith(PUBLISH_ACTION))["with"]["repository-url"]
    assert "prerelease == 'true'" in target and "https://test.pypi.org/legacy/" in target, target
    assert "https://upload.pypi.org/legacy/" in target, target
    assert "testpypi" in job["environment"]["name"] and "pypi" in job["environment"]["name"]
    assert sum(PUBLISH_ACTION in u for j in publish["jobs"].values() for u in uses(j)) == 1


def test_build_job_checks_the_tag_and_the_dists_and_writes_the_notes(publish):
    runs = "\n".join(step.get("run", "") for step in steps(publish["jobs"]["build"]))
    assert "tools/release.py --tag" in runs and "--check" in runs
    assert "tools/release_notes.py --tag" in runs
    release = publish["jobs"]["release"]
    assert permissions(release) == {"contents": "write"}
    assert "--notes-file" in "\n".join(step.get("run", "") for step in steps(release))
    assert set(release["needs"]) == {"build", "publish"}


def test_ci_tests_three_pythons_with_the_pinned_ruff_and_the_lowest_core():
    ci = load("ci.yml")
    test = ci["jobs"]["test"]
    assert test["strategy"]["matrix"]["python"] == ["3.10", "3.11", "3.12"]
    lint = "\n".join(step.get("run", "") for step in steps(ci["jobs"]["lint"]))
    assert "tools/requirements.txt" in lint and "ruff==" in lint and "ruff check ." in lint
    runs = "\n".join(step.get("run", "") for step in steps(test))
    assert "tools/lowest_core.py" in runs and "tools/requirements.txt" in runs
    wheels = "\n".join(step.get("run", "") for step in steps(ci["jobs"]["wheels"]))
    assert "tools/release.py" in wheels and "--check" in wheels
