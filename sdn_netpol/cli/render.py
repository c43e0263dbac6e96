"""Human-readable rendering shared by the command groups (rich): the reachability matrix
that `matrix` prints and `lab probe` prints measured beside expected (netdev and kernel labs).

JSON contracts live with their values (Matrix.to_json, ProbeReport.to_json); the flow text of
`compile` is cli/flowtext.py's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.columns import Columns
from rich.console import Console, RenderableType
from rich.table import Table

from sdn_netpol.policy.matrix import Matrix

if TYPE_CHECKING:  # not at run time: `matrix` must not load the lab
    from sdn_netpol.lab.lab import ProbeReport

ALLOW, DENY = "✓", "·"


def matrix_table(matrix: Matrix, title: str | None = None, expected: Matrix | None = None) -> Table:
    """Rows are sources with their full names; columns are numbered so 30×30 fits a screen.

    With `expected`, a cell that differs is shown as `✗` (measured ≠ expected).
    """
    table = Table(title=title or f"{matrix.protocol}/{matrix.port}: may ROW connect to COLUMN?",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    count = len(matrix.pods)
    table.add_column("#", justify="right", style="dim", no_wrap=True, min_width=len(str(count)))
    table.add_column("from \\ to", no_wrap=True, min_width=max((len(p) for p in matrix.pods), default=0))
    for i in range(1, count + 1):
        table.add_column(str(i), justify="center", no_wrap=True, min_width=len(str(i)))
    for i, src in enumerate(matrix.pods, start=1):
        cells = [_cell(matrix, expected, src, dst) for dst in matrix.pods]
        table.add_row(str(i), src, *cells)
    return table


def _cell(matrix: Matrix, expected: Matrix | None, src: str, dst: str) -> str:
    value = matrix.allowed[src][dst]
    if expected is not None and expected.allowed[src][dst] != value:
        return "[bold red]✗[/]"
    return f"[green]{ALLOW}[/]" if value else f"[dim]{DENY}[/]"


def print_matrix(console: Console, matrix: Matrix, title: str | None = None, expected: Matrix | None = None) -> None:
    table = matrix_table(matrix, title, expected)
    fit_width(console, table)
    console.print(table)
    console.print(f"  {ALLOW} allowed   {DENY} denied" + ("   ✗ measured differs from expected" if expected else ""))


def wide_console() -> Console:
    """Never wrap a matrix: a 30-pod table is ~130 columns, wider than a default terminal."""
    return Console(width=max(Console().width, 160), highlight=False)


def fit_width(console: Console, renderable: RenderableType) -> None:
    """Widen `console` so that `renderable` is printed at its natural width: rich squeezes a
    table that does not fit (cells become "…"), a long line is better than a lost column."""
    needed = console.measure(renderable, options=console.options.update(max_width=100_000)).maximum
    if needed > console.width:
        console.width = needed


def show_report(console: Console, report: ProbeReport) -> None:
    """Measured (✗ where it differs) beside expected, then the mismatches by name."""
    proto = f"{report.measured.protocol}/{report.measured.port}"
    if report.measured.family_shown and report.measured.family:
        proto += f" IPv{report.measured.family}"
    measured = matrix_table(report.measured, f"measured {proto} ({report.seconds:.1f} s)", report.expected)
    expected = matrix_table(report.expected, f"expected {proto} (policy engine)")
    console.print(Columns([measured, expected], padding=(0, 4)))
    console.print("  ✓ allowed   · denied   ✗ measured differs from expected")
    if report.mismatches:
        console.print(f"[bold red]{len(report.mismatches)} mismatch(es):[/]")
        for src, dst in report.mismatches:
            got = "allowed" if report.measured.allowed[src][dst] else "denied"
            console.print(f"  {src} → {dst}: measured {got} ({report.outcomes.get((src, dst))}), "
                          f"expected {'allowed' if report.expected.allowed[src][dst] else 'denied'}")
    else:
        console.print("[green]measured = expected[/]")
