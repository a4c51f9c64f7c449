"""The price table: what one unit of each provider costs, in one currency.

``<pipeline home>/prices.yaml`` when it exists, else the bundled defaults::

    currency: USD
    prices:                     # per unit, by provider (a backend name)
      "*":         {gpu_sec: 0.0006}    # any provider not listed (~2.16 USD per GPU hour)
      animatic:    {gpu_sec: 0.00001}   # local ffmpeg: a worker second
      source_clip: {gpu_sec: 0.00001}
      placeholder: {gpu_sec: 0.0}

A unit a provider does not list costs nothing. The cost of a call is fixed when it is
recorded: a later price change does not rewrite history. Read with the safe YAML loader; a
broken file is refused with the file and field named.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anime_pipeline.ledger.records import Unit

PRICES_FILE = "prices.yaml"
MAX_FILE_BYTES = 256 * 1024
ANY_PROVIDER = "*"


class PriceTableError(ValueError):
    pass


class PriceTable(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    prices: dict[str, dict[Unit, float]] = Field(default_factory=dict)
    source: str = "defaults"

    def price(self, provider: str, unit: Unit) -> float:
        table = self.prices.get(provider)
        if table is None:
            table = self.prices.get(ANY_PROVIDER, {})
        return float(table.get(unit, 0.0))

    def cost(self, provider: str, unit: Unit, amount: float) -> float:
        return round(self.price(provider, unit) * amount, 6)


DEFAULT_PRICES = PriceTable(currency="USD", prices={
    ANY_PROVIDER: {"gpu_sec": 0.0006},
    "animatic": {"gpu_sec": 0.00001},
    "source_clip": {"gpu_sec": 0.00001},
    "placeholder": {"gpu_sec": 0.0},
})


def load_prices(home: Path) -> PriceTable:
    """``<home>/prices.yaml``, else :data:`DEFAULT_PRICES`."""
    from anime_pipeline.domain.safe_yaml import YamlRefused, load_yaml

    path = home / PRICES_FILE
    if not path.exists():
        return DEFAULT_PRICES
    if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
        raise PriceTableError(f"{path}: not a regular file of at most {MAX_FILE_BYTES} bytes")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), max_depth=4, max_nodes=5_000)
    except (YamlRefused, UnicodeDecodeError) as e:
        raise PriceTableError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise PriceTableError(f"{path}: must be a mapping with currency and prices")
    for provider, units in (data.get("prices") or {}).items():
        for unit, value in (units or {}).items() if isinstance(units, dict) else ():
            if isinstance(value, int | float) and value < 0:
                raise PriceTableError(f"{path}: prices.{provider}.{unit}: must not be negative")
    try:
        return PriceTable.model_validate({**data, "source": str(path)})
    except ValidationError as e:
        where = "; ".join(".".join(str(p) for p in err["loc"]) + ": " + err["msg"]
                          for err in e.errors(include_url=False))
        raise PriceTableError(f"{path}: {where}") from None
