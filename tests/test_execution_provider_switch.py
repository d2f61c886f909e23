"""One line of slmk.toml switches the execution provider for build, install and run."""

from __future__ import annotations

import json

import pytest


def _one_error_line(result) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow
def test_switching_ep_in_slmk_toml_changes_build_install_and_run(run_slmk, tmp_path, tiny_model_dir):
    cache = tmp_path / "foundry"
    # CPU-only here; the override makes the test mean the same on a machine with a GPU
    env = {"SLMK_OVERRIDE_CUDA": "0"}
    variants = {}
    for ep, provider_key, suffix in (("cpu", None, "generic-cpu"), ("cuda", "cuda", "cuda-gpu")):
        project = tmp_path / ep
        project.mkdir()
        (project / "slmk.toml").write_text(
            f'model = "{tiny_model_dir}"\nexecution_provider = "{ep}"\noutput = "build"\nname = "tiny-{ep}"\n'
            f'[install]\ncache_dir = "{cache}"\n'
        )
        result = run_slmk("-q", "convert", "--json", cwd=project, env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["plan"]["execution_provider"] == ep
        genai = json.loads((project / "build" / "genai_config.json").read_text())
        providers = genai["model"]["decoder"]["session_options"].get("provider_options", [])
        names = [name for option in providers for name in option]
        assert names == ([provider_key] if provider_key else []), names
        assert json.loads((project / "build" / "slmk_build.json").read_text())["execution_provider"] == ep

        result = run_slmk("install", "build", "--json", cwd=project, env=env)
        assert result.returncode == 0, result.stderr
        installed = json.loads(result.stdout)
        assert installed["execution_provider"] == ep
        assert f"tiny-{ep}-{suffix}-1" in installed["path"], installed["path"]
        variants[ep] = installed

    # cpu runs; cuda stops with one clear line, for both runtimes, on a machine without a GPU
    ok = run_slmk(
        "run", "tiny-cpu", "--prompt", "How many moons does Veltra have?", "--json", cwd=tmp_path / "cpu", env=env
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["answer"].strip()
    for runtime in ("ortgenai", "foundry"):
        line = _one_error_line(
            run_slmk("run", "tiny-cuda", "--prompt", "hi", "--runtime", runtime, cwd=tmp_path / "cuda", env=env)
        )
        assert "cannot run the model on cuda" in line and "SLMK_OVERRIDE_CUDA" in line


def test_fp16_on_cuda_plans_but_cpu_refuses(run_slmk, tmp_path, tiny_model_dir):
    plan = run_slmk(
        "convert", str(tiny_model_dir), "-p", "fp16", "--ep", "cuda", "--plan", "--json", "-o", str(tmp_path / "o")
    )
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["steps"][0]["precision"] == "fp16"
    line = _one_error_line(
        run_slmk("convert", str(tiny_model_dir), "-p", "fp16", "--ep", "cpu", "--plan", "-o", str(tmp_path / "o"))
    )
    assert "does not load there" in line
