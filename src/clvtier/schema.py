"""The EcomX data contract: tables, columns, kinds and keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["id", "date", "number", "count", "text", "response"]


@dataclass(frozen=True)
class Column:
    """One contract column.

    ``required`` columns must be present; optional ones are filled with NULL
    (or, for ``transaction_id``, with the line number) and the features that
    need them become zeros.
    """

    name: str
    kind: Kind
    required: bool = True


@dataclass(frozen=True)
class Table:
    """One contract table."""

    name: str
    columns: tuple[Column, ...]
    required: bool
    key: str | None
    file_stems: tuple[str, ...]
    dated_by: str | None  # the column that places a row in time; None = not time-bounded

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


CUSTOMERS = Table(
    name="customers",
    columns=(
        Column("customer_id", "id"),
        Column("join_date", "date", required=False),
        Column("last_purchase_date", "date", required=False),
        Column("age", "number", required=False),
        Column("gender", "text", required=False),
        Column("location", "text", required=False),
    ),
    required=False,
    key="customer_id",
    file_stems=("customers_final", "customers"),
    dated_by="join_date",
)

TRANSACTIONS = Table(
    name="transactions",
    columns=(
        Column("transaction_id", "id", required=False),
        Column("customer_id", "id"),
        Column("transaction_date", "date"),
        Column("transaction_amount", "number"),
        Column("product_category", "text", required=False),
    ),
    required=True,
    key="transaction_id",
    file_stems=("transactions_final", "transactions"),
    dated_by="transaction_date",
)

ENGAGEMENTS = Table(
    name="engagements",
    columns=(
        Column("customer_id", "id"),
        Column("number_of_site_visits", "count"),
        Column("number_of_emails_opened", "count"),
        Column("number_of_clicks", "count"),
    ),
    required=False,
    key="customer_id",
    file_stems=("engagements_final", "engagements"),
    dated_by=None,
)

MARKETING = Table(
    name="marketing",
    columns=(
        Column("campaign_id", "id"),
        Column("customer_id", "id"),
        Column("response", "response"),
        Column("promotion_type", "text"),
        Column("campaign_date", "date"),
    ),
    required=False,
    key="campaign_id",
    file_stems=("marketing_final", "marketing"),
    dated_by="campaign_date",
)

TABLES: dict[str, Table] = {t.name: t for t in (CUSTOMERS, TRANSACTIONS, ENGAGEMENTS, MARKETING)}

#: File extensions recognised when a directory is searched, in order of preference.
EXTENSIONS = (".parquet", ".csv", ".csv.gz", ".txt", ".tsv")

#: Accepted spellings of campaign responses, normalised to Yes / No.
RESPONSE_YES = ("yes", "y", "true", "t", "1")
RESPONSE_NO = ("no", "n", "false", "f", "0")

#: Date formats accepted besides ISO: format -> (regex, group index of year, month, day).
DATE_PATTERNS: dict[str, tuple[str, tuple[int, int, int]]] = {
    # format -> (regex with year, month, day groups in some order, group index of (y, m, d))
    "%Y%m%d": (r"^(\d{4})(\d{2})(\d{2})$", (1, 2, 3)),
    "%d/%m/%Y": (r"^(\d{1,2})/(\d{1,2})/(\d{4})$", (3, 2, 1)),
    "%m/%d/%Y": (r"^(\d{1,2})/(\d{1,2})/(\d{4})$", (3, 1, 2)),
    "%d.%m.%Y": (r"^(\d{1,2})\.(\d{1,2})\.(\d{4})$", (3, 2, 1)),
    "%Y/%m/%d": (r"^(\d{4})/(\d{1,2})/(\d{1,2})$", (1, 2, 3)),
}
