"""The HTML report of ``ace-erasure evaluate``: one self-contained page from ``results.json``.

The page reads a results dict of the format in ``docs/results-schema.md``. Everything it shows is
inlined, so ``report.html`` can be mailed or archived alone: images as base64 ``data:`` URIs
(read from the PNG files the dict names, relative to the report folder) and charts as SVG drawn
with matplotlib (text as paths, so no fonts; no CSS, scripts or network beyond the page's own).
The same results give the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import matplotlib
from jinja2 import ChainableUndefined, Environment, PackageLoader, Undefined
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ace_erasure.errors import AceError

__all__ = ["FORMAT_VERSION", "ReportError", "render_report", "write_report"]

FORMAT_VERSION = 1  # the results.json format this module reads
REPORT_NAME = "report.html"

# Sanity bounds of an attack (docs/results-schema.md): it must work on the unedited model and
# must not work on the text-blind control, or its ASR on the erased model means nothing.
UNEDITED_ASR_MIN = 0.9
TEXT_BLIND_ASR_MAX = 0.1

MISSING = "–"  # how a null (or absent) value prints
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# id definitions and references in matplotlib's SVG, renamed per chart so that ids stay unique
# in the page (an inline SVG's ids live in the HTML document's id space).
_SVG_ID = re.compile(r'(\bid="|href="#|url\(#)([^")]+)')


class ReportError(AceError):
    """A results dict that cannot be turned into a report (missing image, unknown format, ...)."""


def write_report(results: dict[str, Any], folder: Path) -> Path:
    """Render ``folder/report.html`` from ``results`` (the ``results.json`` dict) and return it.

    Image paths in ``results`` are relative to ``folder`` and are read and inlined now. The page
    is rendered in memory first and then written through a temporary file in ``folder`` that is
    renamed into place, so a failure leaves neither a partial report nor a temporary file.

    Raises:
        ReportError: an unsupported ``format_version``, a missing or unreadable image, an image
            path outside ``folder``, or a report that cannot be written.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"cannot write the report: {folder} is not a folder")
    version = results.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ReportError(
            f"results format_version {version!r} is not supported (this version reads "
            f"{FORMAT_VERSION}); re-run `ace-erasure evaluate` with this version"
        )
    html = render_report(results, folder)
    out = folder / REPORT_NAME
    tmp = folder / f".{REPORT_NAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(html, encoding="utf-8")
        tmp.replace(out)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ReportError(f"cannot write {out} ({reason})") from error
    finally:
        tmp.unlink(missing_ok=True)
    return out


def render_report(results: dict[str, Any], folder: Path) -> str:
    """The report page as a string (``write_report`` without the file); images are read from
    ``folder``."""
    images = {path: _png_data_uri(folder, path) for path in _image_paths(results)}
    attacks = _attack_names(results)
    sections = [
        {
            "id": f"e{index}-{_slug(result.get('concept', ''))}-{number}",
            "erasure": erasure,
            "result": result,
            "loss_charts": {
                name: _loss_chart(name, curves, f"loss-e{index}-{number}-{_slug(name)}")
                for name, attack in result.get("attacks", {}).items()
                if (curves := attack.get("loss_curves"))
            },
        }
        for index, erasure in enumerate(results.get("erasures", []))
        for number, result in enumerate(erasure.get("results", []))
    ]
    template = _environment().get_template("report.html.j2")
    return template.render(
        results=results,
        attacks=attacks,
        sections=sections,
        images=images,
        accuracy_chart=_accuracy_chart(results),
        asr_chart=_asr_chart(results, attacks),
        tradeoff_chart=_tradeoff_chart(results),
        unedited_asr_min=UNEDITED_ASR_MIN,
        text_blind_asr_max=TEXT_BLIND_ASR_MAX,
    )


# --- values as text ------------------------------------------------------------------------


def show(value: Any, digits: int | None = 2) -> str:
    """A value as the report prints it: null (or absent) as "–", floats with ``digits`` decimals
    (as written if ``digits`` is None), lists and dicts as comma-separated items."""
    if value is None or isinstance(value, Undefined):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return MISSING
        return str(value) if digits is None else f"{value:.{digits}f}"
    if isinstance(value, dict):
        items = (f"{key}: {show(item, digits)}" for key, item in value.items())
        return ", ".join(items) or MISSING
    if isinstance(value, list | tuple):
        return ", ".join(show(item, digits) for item in value) or MISSING
    return str(value)


def _below(value: Any, bound: float) -> bool:
    """Jinja test: ``value`` is a number smaller than ``bound`` (null is not)."""
    return isinstance(value, int | float) and value < bound


def _above(value: Any, bound: float) -> bool:
    """Jinja test: ``value`` is a number larger than ``bound`` (null is not)."""
    return isinstance(value, int | float) and value > bound


def _slug(text: str) -> str:
    """``text`` as an HTML id part (letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _environment() -> Environment:
    # autoescape=True, not select_autoescape: the template's name ends in .j2, not .html
    env = Environment(
        loader=PackageLoader("ace_erasure.evaluation", "templates"),
        autoescape=True,
        undefined=ChainableUndefined,  # a key a results file lacks prints as "–"
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["show"] = show
    env.tests["below"] = _below
    env.tests["above"] = _above
    return env


# --- images --------------------------------------------------------------------------------


def _image_paths(results: dict[str, Any]) -> Iterator[str]:
    """Every image path that ``results`` names (relative to the report folder)."""
    for erasure in results.get("erasures", []):
        for result in erasure.get("results", []):
            images = result.get("images", {})
            yield from images.get("before", [])
            yield from images.get("after", [])
            for attack in result.get("attacks", {}).values():
                yield from attack.get("images", {}).get("attacked", [])


def _png_data_uri(folder: Path, relative: str) -> str:
    """The PNG file ``folder / relative`` as a ``data:image/png;base64,`` URI."""
    path = folder / relative
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise ReportError(f"image {relative!r} is not a relative path inside {folder}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReportError(
            f"image {path} named in the results does not exist (results.json and its images "
            "must be kept together; re-run `ace-erasure evaluate`)"
        ) from None
    except OSError as error:
        raise ReportError(f"cannot read image {path} ({error.strerror})") from error
    if not data.startswith(PNG_SIGNATURE):
        raise ReportError(f"image {path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# --- charts --------------------------------------------------------------------------------


def _row_label(erasure: dict[str, Any], result: dict[str, Any]) -> str:
    """How a (erasure, concept) row is named in charts."""
    return f"{erasure.get('label', '?')} · {result.get('concept', '?')}"


def _attack_names(results: dict[str, Any]) -> list[str]:
    """Attacks in the order run (settings), then any other attack found in the results."""
    names = list(results.get("settings", {}).get("attacks", []))
    for erasure in results.get("erasures", []):
        for result in erasure.get("results", []):
            names += [name for name in result.get("attacks", {}) if name not in names]
    return names


def _accuracy_chart(results: dict[str, Any]) -> Markup | None:
    """Grouped bars of Acc_e, Acc_g and Acc_s per (erasure, concept), base values marked."""
    rows = [
        (_row_label(erasure, result), result.get("metrics", {}))
        for erasure in results.get("erasures", [])
        for result in erasure.get("results", [])
    ]
    if not rows:
        return None
    keys = {
        "Acc_e (erased, ↓)": "acc_e",
        "Acc_g (synonyms, ↓)": "acc_g",
        "Acc_s (others, ↑)": "acc_s",
    }
    return _bar_chart(
        "Accuracy per erasure and concept",
        groups=[label for label, _ in rows],
        series={name: [metrics.get(key) for _, metrics in rows] for name, key in keys.items()},
        references={
            name: [metrics.get(f"{key}_base") for _, metrics in rows] for name, key in keys.items()
        },
        reference_label="unedited model",
        chart_id="chart-accuracy",
    )


def _asr_chart(results: dict[str, Any], attacks: list[str]) -> Markup | None:
    """Grouped bars of the attack success rate per attack, one bar per (erasure, concept)."""
    rows = [
        (_row_label(erasure, result), result.get("attacks", {}))
        for erasure in results.get("erasures", [])
        for result in erasure.get("results", [])
    ]
    if not rows or not attacks:
        return None
    return _bar_chart(
        "Attack success rate (ASR) on the erased model",
        groups=attacks,
        series={
            label: [by_name.get(name, {}).get("asr") for name in attacks] for label, by_name in rows
        },
        references={
            label: [by_name.get(name, {}).get("no_attack_rate") for name in attacks]
            for label, by_name in rows
        },
        reference_label="no attack",
        chart_id="chart-asr",
    )


def _tradeoff_chart(results: dict[str, Any], attack: str = "soft") -> Markup | None:
    """H (higher is better) against the soft-prompt ASR (lower is better), one point per
    (erasure, concept): the comparison's trade-off at a glance (with two or more erasures)."""
    points = [
        (
            _row_label(erasure, result),
            result.get("metrics", {}).get("H"),
            result.get("attacks", {}).get(attack, {}).get("asr"),
        )
        for erasure in results.get("erasures", [])
        for result in erasure.get("results", [])
    ]
    points = [p for p in points if p[1] is not None and p[2] is not None]
    if len(results.get("erasures", [])) < 2 or not points:
        return None
    with _chart_style():
        figure = Figure(figsize=(5.2, 3.6))
        axes = figure.add_subplot()
        for label, h, asr in points:
            axes.plot([asr], [h], "o", markersize=5)
            axes.annotate(label, (asr, h), fontsize=7, xytext=(4, 3), textcoords="offset points")
        axes.set_xlim(-0.05, 1.05)
        axes.set_ylim(-0.05, 1.05)
        axes.set_xlabel(f"{attack} ASR (lower is better)")
        axes.set_ylabel("H (higher is better)")
        axes.set_title("Erasure quality against robustness")
        return _svg(figure, "chart-tradeoff")


def _chart_style() -> AbstractContextManager[None]:
    """matplotlib settings for inline charts: text drawn as paths (no fonts to ship), no maths
    parsing of user labels ("$" in a concept), ids from a fixed salt (same results, same bytes)."""
    return matplotlib.rc_context(
        {
            "svg.fonttype": "path",
            "svg.hashsalt": "ace-erasure report",
            "text.parse_math": False,
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )


def _bar_chart(
    title: str,
    groups: Sequence[str],
    series: dict[str, list[float | None]],
    references: dict[str, list[float | None]],
    reference_label: str,
    chart_id: str,
) -> Markup:
    """Rates in [0, 1] as grouped bars: one group per ``groups`` entry, one bar per series, a
    black tick per bar at its reference value; a missing value is marked "–" on the axis."""
    width = 0.8 / len(series)
    ticks: list[tuple[float, float]] = []  # (bar centre, reference value)
    with _chart_style():
        figure = Figure(figsize=(min(12.0, 3.5 + len(groups) * (0.3 * len(series) + 0.5)), 3.2))
        axes = figure.subplots()
        for number, (name, values) in enumerate(series.items()):
            centres = [group - 0.4 + (number + 0.5) * width for group in range(len(groups))]
            heights = [0.0 if value is None else value for value in values]
            axes.bar(centres, heights, width, color=f"C{number}", label=name)
            for centre, value, reference in zip(centres, values, references[name]):
                if value is None:
                    axes.text(centre, 0.01, MISSING, ha="center", va="bottom", color="0.4")
                if reference is not None:
                    ticks.append((centre, reference))
        if ticks:
            axes.hlines(
                [reference for _, reference in ticks],
                [centre - width / 2 for centre, _ in ticks],
                [centre + width / 2 for centre, _ in ticks],
                colors="black",
                linewidth=1.5,
                label=reference_label,
            )
        axes.set_xticks(range(len(groups)), [textwrap.fill(group, 18) for group in groups])
        axes.set_ylim(0, 1.05)
        axes.set_ylabel("rate")
        axes.set_title(title)
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        return _svg(figure, chart_id)


def _loss_chart(attack: str, curves: list[list[float | None]], chart_id: str) -> Markup:
    """A small chart of every loss curve of one attack (one curve per attacked pair, or one)."""
    with _chart_style():
        figure = Figure(figsize=(3.2, 2.2))
        axes = figure.subplots()
        for curve in curves:
            values = [math.nan if value is None else value for value in curve]
            axes.plot(range(len(values)), values, linewidth=1, alpha=0.7)
        runs = f"{len(curves)} run{'s' if len(curves) != 1 else ''}"
        axes.set_title(f"{attack}: loss ({runs})")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        return _svg(figure, chart_id)


def _svg(figure: Figure, chart_id: str) -> Markup:
    """``figure`` as an inline ``<svg>`` element whose ids all start with ``chart_id`` (call it
    inside ``_chart_style()``)."""
    buffer = io.StringIO()
    figure.set_layout_engine("constrained")
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML declaration and DOCTYPE: not valid in HTML
    # matplotlib escapes the text it writes (labels come from the results): safe to inline
    return Markup(_SVG_ID.sub(lambda match: f"{match[1]}{chart_id}-{match[2]}", svg))
