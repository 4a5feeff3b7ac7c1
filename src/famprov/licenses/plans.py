"""The plan catalogue: what a grant bundles, and for how long."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Product:
    code: str
    name: str


@dataclass(frozen=True, slots=True)
class Plan:
    code: str
    name: str
    products: tuple[Product, ...]
    term_years: int

    @property
    def product_codes(self) -> list[str]:
        return [p.code for p in self.products]


FAMILY = Plan(
    code="family",
    name="Family plan bundle",
    products=(
        Product("family_plan", "Family plan for up to 5 members"),
        Product("dark_web_monitoring", "Dark-web monitoring (BreachWatch)"),
        Product("file_storage_10gb", "10 GB of file storage"),
    ),
    term_years=1,
)

CATALOGUE: dict[str, Plan] = {FAMILY.code: FAMILY}
DEFAULT_PLAN = FAMILY


def product_name(code: str) -> str:
    for plan in CATALOGUE.values():
        for product in plan.products:
            if product.code == code:
                return product.name
    return code
