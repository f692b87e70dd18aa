"""HTML of the report: one self-contained page (inline CSS, no script, no server, no network)."""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from html import escape
from typing import Any, Sequence


@dataclass
class Section:
    """One section of the page. ``body``: HTML fragments (figures, tables); ``notes``: what is missing."""

    id: str
    title: str
    intro: str = ""  # plain text: what the section shows
    body: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # plain text

    def html(self) -> str:
        parts = [f'<section id="{escape(self.id)}">', f"<h2>{escape(self.title)}</h2>"]
        if self.intro:
            parts.append(f'<p class="intro">{escape(self.intro)}</p>')
        parts += self.body
        if not self.body and not self.notes:
            self.notes.append("nothing to show yet")
        if self.notes:
            items = "".join(f"<li>{escape(n)}</li>" for n in self.notes)
            parts.append(f'<div class="missing"><strong>Missing or incomplete:</strong><ul>{items}</ul></div>')
        parts.append("</section>")
        return "\n".join(parts)


def figure(src: str, caption: str) -> str:
    """An image beside the page (relative ``src``) with its caption."""
    return (f'<figure><img src="{escape(src)}" alt="{escape(caption)}" loading="eager">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_NUMERIC = re.compile(r"[-+]?[\d,.]+(e[-+]?\d+)?( ± [\d.]+)?( MiB)?")  # pre-formatted numbers align right too


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, raw: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped except the columns listed in ``raw`` (pre-rendered HTML)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    def cell(i: int, c: Any) -> str:
        numeric = (isinstance(c, (int, float)) and not isinstance(c, bool)) or \
            (isinstance(c, str) and _NUMERIC.fullmatch(c) is not None)
        num = ' class="num"' if numeric else ""
        return f"<td{num}>{c if i in raw else escape(fmt(c))}</td>"

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def pre(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1300px;
       padding: 0 24px 48px; color: #1d1d1f; }
h1 { margin: 24px 0 4px; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
.meta { color: #555; } .intro { color: #333; max-width: 980px; }
nav ol { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 2px 28px;
         padding-left: 0; list-style-position: inside; } nav li { overflow-wrap: anywhere; }
nav a { text-decoration: none; }
figure { margin: 12px 0 20px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
.missing { background: #fff6e0; border-left: 4px solid #e0a000; padding: 6px 14px; margin: 10px 0; }
.missing ul { margin: 4px 0; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: 10px; overflow-x: auto; font-size: 12.5px; white-space: pre-wrap; }
.status-done { color: #17702e; } .status-failed, .status-diverged, .status-damaged { color: #b00020; font-weight: bold; }
.status-running { color: #0050b0; } .status-pending, .status-missing { color: #777; }
details pre { max-height: 320px; overflow: auto; }
table.claims td { max-width: 460px; } table.claims .why { color: #444; font-size: 12px; margin-top: 2px; }
.verdict { font-weight: bold; text-decoration: none; white-space: nowrap; }
.verdict-supported { color: #17702e; } .verdict-contradicted { color: #b00020; }
.verdict-not-enough-evidence { color: #8a5a00; } .verdict-not-measured { color: #777; }
tr:target { background: #fffbd6; }
"""


def page(title: str, subtitle: str, sections: Sequence[Section], inputs: str = "") -> str:
    """The whole page; ``inputs``: the key of what it was drawn from (a meta tag: see report.write_report)."""
    toc = "".join(f'<li><a href="#{escape(s.id)}">{escape(s.title)}</a></li>' for s in sections)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(s.html() for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="archrelax-inputs" content="{escape(inputs)}">
<title>{escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="meta">{escape(subtitle)} · written {now} by <code>archrelax report</code></p>
<nav><ol>{toc}</ol></nav>
{body}
</body></html>
"""
