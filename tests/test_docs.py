"""The README and the docs pages: their size, every relative link, and the tables made from benchmark JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from zoo import docs_tables

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def _slug(heading: str) -> str:
    """The anchor a forge (GitHub, GitLab, Gitea) gives a heading: lower case, punctuation dropped, spaces
    to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on the forge."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(page.read_text()).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            slug = _slug(m[1])
            out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return out


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def broken_links(page: Path) -> list[str]:
    """Each relative link of a page whose file or anchor does not exist."""
    text = re.sub(r"`[^`\n]*`", "", _prose(page.read_text()))  # nor in inline code
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


def test_the_docs_pages_exist():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert names >= {"README.md", "CONTRIBUTING.md", "docs/speed.md", "docs/training.md", "docs/formats.md",
                     "docs/limits.md"}, names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    assert broken_links(page) == []


def test_link_check_sees_a_broken_link(tmp_path: Path):
    (tmp_path / "other.md").write_text("# The `zoo` command, and more\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("# Here\n\n[ok](other.md#the-zoo-command-and-more) [ok](other.md#twice-1) [ok](#here)\n"
                    "[gone](missing.md) [bad anchor](other.md#nowhere) [web](https://example.org/x)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert broken_links(page) == ["missing.md: no such file", "other.md#nowhere: no heading #nowhere in other.md"]


def test_readme_fits_a_few_screens():
    """A newcomer's README: under about 250 lines, none over 120 characters."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250 and max(map(len, lines)) <= 120, (len(lines), max(map(len, lines)))


# --------------------------------------------------------------------------- tables from benchmark JSON

def _inference_json(model: str, speed: float) -> dict:
    """A small `zoo bench --json` file: torch and onnx, one case."""
    def row(img_s, vs_ort):
        return {"first_call_s": 0.1, "max_abs_diff": 0.0, "seconds": 1 / img_s, "spread": 0.05,
                "images_per_s": img_s, "gflops": img_s * 0.2, "vs_default": 1.0, "vs_onnxruntime": vs_ort}

    def result(framework, rows):
        return {"framework": framework, "target": framework, "describe": f"{framework} 1.0", "matmul_gflops": 100.0,
                "model": model, "nominal": "96x96", "onnxruntime_row": "onnxruntime (zoo default)"
                if framework == "torch" else "zoo.predict(model, x)",
                "first": {"bare_import_s": 1.0, "load_s": 0.1, "first_predict_s": 0.05},
                "cases": [{"batch": 1, "size": 96, "flops": 2e8, "rows": rows}]}
    return {"machine": "a test machine", "results": [
        result("torch", {"zoo.predict(model, x)": row(speed, speed / 100), "onnxruntime (zoo default)": row(100, 1)}),
        result("onnx", {"zoo.predict(model, x)": row(100.0, 1.0)})]}


def _page(tmp_path: Path, body: str, **files: dict) -> Path:
    (tmp_path / "bench").mkdir(exist_ok=True)
    for name, data in files.items():
        (tmp_path / "bench" / f"{name}.json").write_text(json.dumps(data))
    page = tmp_path / "page.md"
    page.write_text(f"# Speed\n\nBefore.\n\n{body}\n\nAfter.\n")
    return page


def test_tables_render_from_json(tmp_path: Path):
    page = _page(tmp_path, "<!-- bench:inference nin -->\nold, typed by hand\n<!-- /bench -->\n\n"
                           "<!-- bench:onnxruntime nin lenet -->\n<!-- /bench -->\n\n"
                           "<!-- bench:training r18 -->\n<!-- /bench -->",
                 nin=_inference_json("nin", 150.0), lenet=_inference_json("lenet", 50.0),
                 r18={"model": "resnet18_d2l", "input_size": 32, "batch_size": 128, "machine": "a test machine",
                      "images_per_s": {"torch": [500, 504, 510], "flax": [95, 96, 94]}})
    assert docs_tables.main(["--check", str(page)]) == 1  # the typed table differs from its JSON
    assert docs_tables.main([str(page)]) == 0
    text = page.read_text()
    assert "old, typed by hand" not in text and text.startswith("# Speed\n\nBefore.") and text.endswith("After.\n")
    assert "| zoo.predict(model, x) [default] | 150.0  x1.00  30.0 |" in text  # zoo bench's own table
    assert "| nin | 96x96 | 1 | 100 | x1.50 | torch |" in text and "| lenet | 96x96 | 1 | 100 | x0.50 | onnx |" in text
    assert "| resnet18_d2l, 32 x 32 (3 rounds) | **504** | 95 (x0.19) |\n\nMachine: a test machine" in text
    assert docs_tables.main(["--check", str(page)]) == 0  # and now it is in step


def test_error_tables_render_from_the_suites_json(tmp_path: Path):
    """`pytest --errors-json` files: per family the worst over its presets and files (two Keras backends), the
    other libraries' files per source, the training steps; a framework without a cell has no column."""
    def rows(*r):
        return {"machine": "m", "device": "cpu", "keras_backend": "?",
                "errors": [{"preset": p, "framework": f, "max_abs": 0.0, "max_rel": v} for p, f, v in r]}

    page = _page(tmp_path, "<!-- bench:agreement tf jax -->\n<!-- /bench -->\n\n<!-- bench:sources tf -->\n"
                           "<!-- /bench -->\n\n<!-- bench:steps tf -->\n<!-- /bench -->",
                 tf=rows(("resnet18", "torch", 1e-7), ("resnet50 (full size)", "torch", 3e-7),
                         ("resnet18", "keras[tensorflow]", 2e-7), ("timm .pth:resnet18", "flax", 4e-7),
                         ("convert:resnet18", "onnx", 9e-7), ("train nin/sgd, 1 step", "torch", 1e-8),
                         ("train nin/sgd, 5 steps", "torch", 5e-8)),
                 jax=rows(("resnet18", "keras[jax]", 6e-7), ("nin", "keras[jax]", 5e-7)))
    assert docs_tables.main([str(page)]) == 0
    text = page.read_text()
    assert "| family | torch | keras[tensorflow] | keras[jax] |" in text  # no onnx: convert:* is not a preset
    assert "| nin |  |  | 5.0e-07 |" in text and "| resnet | 3.0e-07 | 2.0e-07 | 6.0e-07 |" in text
    assert "| source | model | flax |\n|---|---|---|\n| timm .pth | `resnet18` | 4.0e-07 |" in text
    assert "| model, optimizer: 1 / 5 steps | torch |\n|---|---|\n| `nin`, sgd | 1.0e-08 / 5.0e-08 |" in text


def test_tables_name_a_missing_or_wrong_json(tmp_path: Path, capsys):
    page = _page(tmp_path, "<!-- bench:inference gone -->\n<!-- /bench -->")
    with pytest.raises(SystemExit) as stop:
        docs_tables.main([str(page)])
    assert stop.value.code == 2 and "bench/gone.json is missing" in capsys.readouterr().err
    page = _page(tmp_path, "<!-- bench:training nin -->\n<!-- /bench -->", nin=_inference_json("nin", 1.0))
    with pytest.raises(SystemExit):
        docs_tables.main([str(page)])
    assert "not the JSON of a training table" in capsys.readouterr().err


def test_docs_tables_are_in_step_with_their_json():
    """Every marked table of the docs equals what its JSON renders (a page without markers passes)."""
    assert docs_tables.main(["--check", *map(str, PAGES)]) == 0


def _model_rows(text: str) -> dict[str, tuple[str, str]]:
    """docs/models.md's table: each model named in a row -> (its params, its GFLOPs)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([a-z0-9_]+)`", cells[0])
        if ".." in cells[0]:  # `efficientnet_b0` .. `efficientnet_b3`
            stem, first, last = re.fullmatch(r"(.*?)(\d+)", names[0])[1], int(names[0][-1]), int(names[-1][-1])
            names = [f"{stem}{i}" for i in range(first, last + 1)]
        params, gflops = cells[4].split("; "), cells[5].split("; ")
        assert len(params) == len(names) == len(gflops), line
        rows.update({n: (p, g) for n, p, g in zip(names, params, gflops)})
    return rows


def test_the_models_table_lists_every_preset_with_its_size():
    import zoo
    rows = _model_rows((ROOT / "docs" / "models.md").read_text())
    assert sorted(rows) == zoo.list_models(), "docs/models.md's table and the registry name different models"
    for name, (params, gflops) in rows.items():
        spec = zoo.get_spec(name)
        assert params == f"{spec.num_params:,}", (name, params, spec.num_params)
        assert float(gflops) == pytest.approx(spec.flops() / 1e9, rel=5e-3), (name, gflops, spec.flops() / 1e9)
