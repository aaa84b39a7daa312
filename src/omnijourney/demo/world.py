"""The demo retailer "Horizont Sport": a deterministic, seeded synthetic world.

Pure functions, no I/O. `build_world(customers=..., seed=..., anchor=...)` returns the
catalog (with accessory relations), the stores and the warehouse, the event sources and,
per source, the Segment messages its customers' journeys produced over the 90 days before
`anchor`, sorted by timestamp and ready for `POST /v1/batch`.

The journeys follow the scenarios of the product brief (PRODUCT.md), with drop-offs at
every stage so that funnels have something to show:

1. an Instagram / Facebook / Google ad click, anonymous browsing on mobile web, a cart,
   a later login on a desktop that finds the same cart, checkout, order;
2. click & collect: the order is made ready and picked up at a store, where staff offer
   matching accessories;
3. a support chat after a purchase with CSAT, and for some customers a call to the call
   centre the next day about the same order (the "lost context" case);
4. store visits identified by loyalty card, in-store orders and loyalty points;
5. returns: requested online, received at any store (or the warehouse), refunded;
6. e-mail campaigns (delivered, opened, clicked), personalised accessory e-mails built
   from the previous purchase, and mobile-app sessions with screens.

Customers have personas (omnichannel, app-first, web-only, store-only, window shopper),
so single- and multi-channel customers can be compared; a few share a family tablet and
a few type junk identifiers (test@test.com, 0000000000), so identity resolution has
something to guard against, and a cashier's placeholder birthday (00.00.0000) is refused by
the trait's type (shown as a refused trait value on the 360).

Every choice comes from `random.Random` seeded with the world seed (and, per customer,
with the seed and the customer's index), and every message id is derived from them,
so the same seed gives the same world and re-sending it stores nothing twice. Customer
`i`'s journeys do not depend on how many customers the world has, so a smaller world is
a subset of a larger one with the same seed. All times are offsets from `anchor`; events
that would happen at or after it are not generated (those journeys are still in progress).
"""

from __future__ import annotations

import random
import unicodedata
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

HISTORY_DAYS = 90
RETAILER = "Horizont Sport"
SHOP_URLS = {"CZ": "https://cz.horizont.example", "PL": "https://pl.horizont.example"}
CURRENCY = {"CZ": "CZK", "PL": "EUR"}  # the Polish e-shop and stores price in EUR
VAT = {"CZ": 0.21, "PL": 0.23}
LOCALE = {"CZ": "cs-CZ", "PL": "pl-PL"}
TIMEZONE = {"CZ": "Europe/Prague", "PL": "Europe/Warsaw"}
LANGUAGE = {"CZ": "cs", "PL": "pl"}

# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    sku: str
    name: str
    brand: str
    category: str
    price_czk: float
    price_eur: float
    #: "shoe" (EU sizes), "clothing" (XS..XXL) or None
    sizing: str | None
    #: product ids of matching accessories (shoe -> socks/insoles, phone -> case/charger, ...)
    accessories: tuple[str, ...] = ()

    def price(self, currency: str) -> float:
        return self.price_czk if currency == "CZK" else self.price_eur

    @property
    def slug(self) -> str:
        return _ascii(self.name).lower().replace(" ", "-").replace("/", "-")


# (code, name, brand, category, price in CZK, sizing)
_CATALOG_ROWS: tuple[tuple[str, str, str, str, int, str | None], ...] = (
    ("RS-PEG41", "Nike Pegasus 41", "Nike", "Running Shoes", 3290, "shoe"),
    ("RS-VOM18", "Nike Vomero 18", "Nike", "Running Shoes", 3990, "shoe"),
    ("RS-ADZSL2", "Adidas Adizero SL2", "Adidas", "Running Shoes", 2990, "shoe"),
    ("RS-UB5", "Adidas Ultraboost 5", "Adidas", "Running Shoes", 4690, "shoe"),
    ("RS-NIM26", "Asics Gel-Nimbus 26", "Asics", "Running Shoes", 4490, "shoe"),
    ("RS-KAY31", "Asics Gel-Kayano 31", "Asics", "Running Shoes", 4290, "shoe"),
    ("RS-CLF9", "Hoka Clifton 9", "Hoka", "Running Shoes", 3890, "shoe"),
    ("RS-GHO16", "Brooks Ghost 16", "Brooks", "Running Shoes", 3690, "shoe"),
    ("RS-RID17", "Saucony Ride 17", "Saucony", "Running Shoes", 3490, "shoe"),
    ("RS-CMON", "On Cloudmonster", "On", "Running Shoes", 4790, "shoe"),
    ("HS-XU4", "Salomon X Ultra 4 GTX", "Salomon", "Hiking Shoes", 4190, "shoe"),
    ("HS-MOAB3", "Merrell Moab 3", "Merrell", "Hiking Shoes", 2990, "shoe"),
    ("HS-SPIRE", "La Sportiva Spire GTX", "La Sportiva", "Hiking Shoes", 5290, "shoe"),
    ("SK-RU4", "Falke RU4 Endurance", "Falke", "Socks", 449, "clothing"),
    ("SK-STLT", "Stance Run Light Tab", "Stance", "Socks", 349, "clothing"),
    ("SK-BRHK", "Bridgedale Hike Midweight", "Bridgedale", "Socks", 529, "clothing"),
    ("SK-SPRK", "Nike Spark Lightweight", "Nike", "Socks", 299, "clothing"),
    ("SK-INJ", "Injinji Run Lightweight", "Injinji", "Socks", 399, "clothing"),
    ("IN-SFRC", "Superfeet Run Comfort", "Superfeet", "Insoles", 1190, "shoe"),
    ("IN-CXRP", "Currex RunPro", "Currex", "Insoles", 1290, "shoe"),
    ("IN-SD3F", "Sidas 3Feet Activ", "Sidas", "Insoles", 990, "shoe"),
    ("JK-VEN2", "The North Face Venture 2", "The North Face", "Jackets", 3490, "clothing"),
    ("JK-TRS3", "Patagonia Torrentshell 3L", "Patagonia", "Jackets", 4290, "clothing"),
    ("JK-WTII", "Columbia Watertight II", "Columbia", "Jackets", 2290, "clothing"),
    ("JK-BON", "Salomon Bonatti WP", "Salomon", "Jackets", 3190, "clothing"),
    ("JK-OTR", "Adidas Own the Run", "Adidas", "Jackets", 1890, "clothing"),
    ("JK-WRN", "Nike Windrunner", "Nike", "Jackets", 2490, "clothing"),
    ("BP-TAL22", "Osprey Talon 22", "Osprey", "Backpacks", 3390, None),
    ("BP-SPL21", "Deuter Speed Lite 21", "Deuter", "Backpacks", 1990, None),
    ("BP-BORE", "The North Face Borealis", "The North Face", "Backpacks", 2590, None),
    ("BP-TRB20", "Salomon Trailblazer 20", "Salomon", "Backpacks", 1490, None),
    ("BP-KANK", "Fjallraven Kanken", "Fjallraven", "Backpacks", 2290, None),
    ("BT-NALG", "Nalgene Wide Mouth 1 l", "Nalgene", "Bottles", 399, None),
    ("BT-SFLK", "Salomon Soft Flask 500 ml", "Salomon", "Bottles", 690, None),
    ("BT-HF21", "Hydro Flask Standard 21 oz", "Hydro Flask", "Bottles", 1190, None),
    ("BT-PODM", "CamelBak Podium 620 ml", "CamelBak", "Bottles", 449, None),
    ("HP-XM5", "Sony WH-1000XM5", "Sony", "Headphones", 8990, None),
    ("HP-APP2", "Apple AirPods Pro 2", "Apple", "Headphones", 6490, None),
    ("HP-GB3P", "Samsung Galaxy Buds3 Pro", "Samsung", "Headphones", 5490, None),
    ("HP-JBLP3", "JBL Endurance Peak 3", "JBL", "Headphones", 2490, None),
    ("HP-ORPRO", "Shokz OpenRun Pro", "Shokz", "Headphones", 4290, None),
    ("HP-QCU", "Bose QuietComfort Ultra", "Bose", "Headphones", 9490, None),
    ("PH-IP15", "Apple iPhone 15 128 GB", "Apple", "Phones", 19990, None),
    ("PH-IP16P", "Apple iPhone 16 Pro 256 GB", "Apple", "Phones", 33990, None),
    ("PH-GS24", "Samsung Galaxy S24 128 GB", "Samsung", "Phones", 20990, None),
    ("PH-GA55", "Samsung Galaxy A55 128 GB", "Samsung", "Phones", 9990, None),
    ("PH-PX9", "Google Pixel 9 128 GB", "Google", "Phones", 22490, None),
    ("PH-RN13", "Xiaomi Redmi Note 13 128 GB", "Xiaomi", "Phones", 4990, None),
    ("PC-IP15", "Apple iPhone 15 Silicone Case", "Apple", "Phone Cases", 1290, None),
    ("PC-IP16P", "Apple iPhone 16 Pro Clear Case", "Apple", "Phone Cases", 1290, None),
    ("PC-GS24", "Spigen Tough Armor Galaxy S24", "Spigen", "Phone Cases", 790, None),
    ("PC-GA55", "Samsung Galaxy A55 Silicone Case", "Samsung", "Phone Cases", 590, None),
    ("PC-PX9", "Google Pixel 9 Case", "Google", "Phone Cases", 990, None),
    ("PC-RN13", "Xiaomi Redmi Note 13 Case", "Xiaomi", "Phone Cases", 290, None),
    ("CH-AP20", "Apple 20W USB-C Power Adapter", "Apple", "Chargers", 590, None),
    ("CH-SS25", "Samsung 25W Super Fast Charger", "Samsung", "Chargers", 490, None),
    ("CH-ANK30", "Anker Nano 30W", "Anker", "Chargers", 690, None),
    ("CH-ANKPB", "Anker PowerCore 10000", "Anker", "Chargers", 890, None),
    ("SW-FR265", "Garmin Forerunner 265", "Garmin", "Sports Watches", 10990, None),
    ("SW-AWSE", "Apple Watch SE 40 mm", "Apple", "Sports Watches", 6990, None),
    ("SW-PACP", "Polar Pacer Pro", "Polar", "Sports Watches", 6490, None),
    # consumables that runners restock (appended last: the other products keep their ids)
    ("NU-MAU12", "Maurten Gel 100 (12 pack)", "Maurten", "Sports Nutrition", 1290, None),
    ("NU-SIS6", "SiS GO Isotonic Gel (6 pack)", "SiS", "Sports Nutrition", 390, None),
    ("NU-H5Z", "High5 Zero Electrolyte Tablets", "High5", "Sports Nutrition", 199, None),
    ("NU-CLIF12", "Clif Bar Chocolate Chip (12 pack)", "Clif", "Sports Nutrition", 690, None),
)

_RUN_ACCESSORIES = ("SK-RU4", "SK-STLT", "SK-SPRK", "SK-INJ", "IN-SFRC", "IN-CXRP", "BT-SFLK")
_ACCESSORIES_BY_CATEGORY: dict[str, tuple[str, ...]] = {
    "Running Shoes": _RUN_ACCESSORIES,
    "Hiking Shoes": ("SK-BRHK", "IN-SD3F", "IN-SFRC", "BP-TRB20"),
    "Jackets": ("BP-TAL22", "BP-SPL21", "BP-BORE"),
    "Backpacks": ("BT-NALG", "BT-HF21", "BT-PODM"),
    "Headphones": ("CH-ANK30", "CH-ANKPB"),
    "Sports Watches": ("HP-ORPRO", "BT-SFLK", "CH-ANK30"),
}
_ACCESSORIES_BY_CODE: dict[str, tuple[str, ...]] = {
    "PH-IP15": ("PC-IP15", "CH-AP20", "HP-APP2", "CH-ANKPB"),
    "PH-IP16P": ("PC-IP16P", "CH-AP20", "HP-APP2", "CH-ANKPB"),
    "PH-GS24": ("PC-GS24", "CH-SS25", "HP-GB3P", "CH-ANKPB"),
    "PH-GA55": ("PC-GA55", "CH-SS25", "HP-GB3P", "CH-ANKPB"),
    "PH-PX9": ("PC-PX9", "CH-ANK30", "HP-JBLP3", "CH-ANKPB"),
    "PH-RN13": ("PC-RN13", "CH-ANK30", "HP-JBLP3", "CH-ANKPB"),
}

#: what customers come to buy (the accessory categories are bought alongside)
_INTENT_CATEGORIES: tuple[tuple[str, float], ...] = (
    ("Running Shoes", 0.28),
    ("Hiking Shoes", 0.07),
    ("Jackets", 0.14),
    ("Backpacks", 0.09),
    ("Headphones", 0.12),
    ("Phones", 0.12),
    ("Sports Watches", 0.08),
    ("Bottles", 0.05),
    ("Socks", 0.05),
)


def _eur(czk: int) -> float:
    return round(czk / 25.0) - 0.01


def build_catalog() -> tuple[Product, ...]:
    ids = {code: f"P{1001 + i}" for i, (code, *_rest) in enumerate(_CATALOG_ROWS)}
    products = []
    for code, name, brand, category, czk, sizing in _CATALOG_ROWS:
        acc_codes = _ACCESSORIES_BY_CODE.get(code) or _ACCESSORIES_BY_CATEGORY.get(category, ())
        products.append(
            Product(
                product_id=ids[code],
                sku=f"HZ-{code}",
                name=name,
                brand=brand,
                category=category,
                price_czk=float(czk),
                price_eur=_eur(czk),
                sizing=sizing,
                accessories=tuple(ids[c] for c in acc_codes),
            )
        )
    return tuple(products)


# --------------------------------------------------------------------------- locations and sources


@dataclass(frozen=True, slots=True)
class Location:
    location_id: str
    name: str
    kind: str  # "store" or "warehouse"
    city: str
    country: str

    @property
    def currency(self) -> str:
        return CURRENCY[self.country]


LOCATIONS: tuple[Location, ...] = (
    Location("warehouse-1", "Central warehouse Praha-Uzice", "warehouse", "Praha", "CZ"),
    Location("store-praha-1", "Horizont Praha Na Prikope", "store", "Praha", "CZ"),
    Location("store-praha-2", "Horizont Praha Chodov", "store", "Praha", "CZ"),
    Location("store-brno-1", "Horizont Brno Vankovka", "store", "Brno", "CZ"),
    Location("store-ostrava-1", "Horizont Ostrava Nova Karolina", "store", "Ostrava", "CZ"),
    Location("store-warszawa-1", "Horizont Warszawa Zlote Tarasy", "store", "Warszawa", "PL"),
    Location("store-warszawa-2", "Horizont Warszawa Arkadia", "store", "Warszawa", "PL"),
    Location("store-krakow-1", "Horizont Krakow Galeria Krakowska", "store", "Kraków", "PL"),
)
_LOCATION = {loc.location_id: loc for loc in LOCATIONS}
_CITIES: dict[str, tuple[tuple[str, float], ...]] = {
    "CZ": (("Praha", 0.55), ("Brno", 0.28), ("Ostrava", 0.17)),
    "PL": (("Warszawa", 0.6), ("Kraków", 0.4)),
}


@dataclass(frozen=True, slots=True)
class SourceSpec:
    name: str
    channel: str
    #: a server-side source whose events may merge profiles
    trusted: bool
    description: str


SOURCES: tuple[SourceSpec, ...] = (
    SourceSpec("web", "web", False, "e-shop: analytics.js on desktop and mobile web"),
    SourceSpec("app", "app", False, "mobile app: iOS and Android SDKs"),
    SourceSpec("pos", "store", True, "store POS, click & collect desk and loyalty"),
    SourceSpec("chat", "chat", True, "support chat tool"),
    SourceSpec("call_center", "call_center", True, "call-centre telephony and CRM"),
    SourceSpec("email", "email", True, "e-mail platform"),
    SourceSpec("ads", "ads", False, "ad click tracker"),
)


# --------------------------------------------------------------------------- campaigns


@dataclass(frozen=True, slots=True)
class AdCampaign:
    campaign_id: str
    name: str
    platform: str  # instagram, facebook, google
    medium: str  # paid_social, cpc
    category: str
    cost_per_click_czk: float


@dataclass(frozen=True, slots=True)
class EmailCampaign:
    campaign_id: str
    name: str
    #: days before the anchor the campaign is sent
    days_before: int
    category: str | None
    subject: dict[str, str]


AD_CAMPAIGNS: tuple[AdCampaign, ...] = (
    AdCampaign("ig-run-season", "Run season", "instagram", "paid_social", "Running Shoes", 9.5),
    AdCampaign("ig-watch-your-pace", "Watch your pace", "instagram", "paid_social", "Sports Watches", 11.0),
    AdCampaign("fb-outdoor-weekend", "Outdoor weekend", "facebook", "paid_social", "Jackets", 7.5),
    AdCampaign("fb-pack-light", "Pack light", "facebook", "paid_social", "Backpacks", 6.5),
    AdCampaign("g-search-phones", "Phones search", "google", "cpc", "Phones", 14.0),
    AdCampaign("g-shopping-audio", "Audio shopping", "google", "cpc", "Headphones", 12.0),
    AdCampaign("g-search-running", "Running search", "google", "cpc", "Running Shoes", 10.0),
)
_AD_REFERRERS = {
    "instagram": "https://l.instagram.com/",
    "facebook": "https://lm.facebook.com/",
    "google": "https://www.google.com/",
}

EMAIL_CAMPAIGNS: tuple[EmailCampaign, ...] = (
    EmailCampaign(
        "nl-run-season",
        "Newsletter: run season",
        85,
        "Running Shoes",
        {"cs": "Nová běžecká sezóna je tady", "pl": "Nowy sezon biegowy już tu jest"},
    ),
    EmailCampaign(
        "nl-rain-ready",
        "Newsletter: rain ready",
        71,
        "Jackets",
        {"cs": "Bundy do každého počasí", "pl": "Kurtki na każdą pogodę"},
    ),
    EmailCampaign(
        "nl-phone-upgrade",
        "Newsletter: phone upgrade",
        57,
        "Phones",
        {"cs": "Čas na nový telefon?", "pl": "Czas na nowy telefon?"},
    ),
    EmailCampaign(
        "nl-hydrate",
        "Newsletter: hydrate",
        43,
        "Bottles",
        {"cs": "Pijte chytře na trailu", "pl": "Pij mądrze na szlaku"},
    ),
    EmailCampaign(
        "nl-sound-on",
        "Newsletter: sound on",
        29,
        "Headphones",
        {"cs": "Sluchátka pro každý trénink", "pl": "Słuchawki na każdy trening"},
    ),
    EmailCampaign(
        "nl-trail-time",
        "Newsletter: trail time",
        15,
        "Hiking Shoes",
        {"cs": "Vyrazte do hor", "pl": "Ruszaj w góry"},
    ),
    EmailCampaign(
        "nl-weekend-sale",
        "Newsletter: weekend sale",
        4,
        None,
        {"cs": "Víkendový výprodej -20 %", "pl": "Weekendowa wyprzedaż -20%"},
    ),
)
PICKUP_READY_EMAIL = "tx-pickup-ready"
ACCESSORIES_EMAIL = "auto-post-purchase-accessories"


# --------------------------------------------------------------------------- customers

PERSONAS: tuple[tuple[str, float], ...] = (
    ("omnichannel", 0.34),  # ads, mobile web, desktop, e-mail, stores, chat, calls
    ("app_first", 0.10),  # the app, e-mail, stores
    ("web_only", 0.18),  # single-channel: the e-shop only
    ("store_only", 0.22),  # single-channel: stores with a loyalty card (a few sign up online later)
    ("window_shopper", 0.16),  # ads and anonymous browsing; never buys
)
_LOYALTY_SHARE = {"omnichannel": 0.8, "app_first": 0.75, "store_only": 1.0}
_EMAIL_OPT_IN = {"omnichannel": 0.85, "app_first": 0.7}


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST_NAMES = {
    ("CZ", "f"): _words(
        "Jana Eva Lucie Kateřina Tereza Petra Martina Veronika Barbora Klára Anna Markéta Monika Michaela Adéla"
    ),
    ("CZ", "m"): _words("Jan Petr Tomáš Martin Jakub Lukáš Ondřej David Michal Pavel Jiří Filip Vojtěch Adam Marek"),
    ("PL", "f"): _words("Anna Katarzyna Małgorzata Agnieszka Magdalena Joanna Aleksandra Monika Natalia Zuzanna"),
    ("PL", "m"): _words("Piotr Krzysztof Tomasz Paweł Michał Marcin Jakub Łukasz Kamil Mateusz"),
}
_LAST_NAMES = {
    "CZ": (
        ("Novák", "Nováková"),
        ("Svoboda", "Svobodová"),
        ("Novotný", "Novotná"),
        ("Dvořák", "Dvořáková"),
        ("Černý", "Černá"),
        ("Procházka", "Procházková"),
        ("Kučera", "Kučerová"),
        ("Veselý", "Veselá"),
        ("Horák", "Horáková"),
        ("Němec", "Němcová"),
        ("Pokorný", "Pokorná"),
        ("Král", "Králová"),
        ("Růžička", "Růžičková"),
        ("Beneš", "Benešová"),
    ),
    "PL": (
        ("Nowak", "Nowak"),
        ("Kowalski", "Kowalska"),
        ("Wiśniewski", "Wiśniewska"),
        ("Wójcik", "Wójcik"),
        ("Kowalczyk", "Kowalczyk"),
        ("Kamiński", "Kamińska"),
        ("Lewandowski", "Lewandowska"),
        ("Zieliński", "Zielińska"),
        ("Szymański", "Szymańska"),
        ("Woźniak", "Woźniak"),
    ),
}
_EMAIL_DOMAINS = {
    "CZ": ("seznam.cz", "gmail.com", "email.cz", "centrum.cz", "outlook.com"),
    "PL": ("gmail.com", "wp.pl", "onet.pl", "o2.pl", "interia.pl"),
}
_CLOTHING = {"f": ("XS", "S", "M", "L"), "m": ("S", "M", "L", "XL", "XXL")}
_SHOE = {"f": (36, 37, 38, 39, 40, 41), "m": (40, 41, 42, 43, 44, 45, 46)}

JUNK_EMAIL = "test@test.com"
JUNK_PHONE = "0000000000"
JUNK_BIRTHDAY = "00.00.0000"


@dataclass(frozen=True, slots=True)
class Customer:
    index: int
    #: the e-shop account id, sent as userId once the customer is known in a channel
    user_id: str
    first_name: str
    last_name: str
    email: str
    #: E.164
    phone: str
    loyalty_card: str | None
    country: str
    city: str
    preferred_store: str
    shoe_size: int
    clothing_size: str
    persona: str
    email_opt_in: bool

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    @property
    def currency(self) -> str:
        return CURRENCY[self.country]

    @property
    def locale(self) -> str:
        return LOCALE[self.country]

    @property
    def language(self) -> str:
        return LANGUAGE[self.country]

    @property
    def has_account(self) -> bool:
        return self.persona in ("omnichannel", "app_first", "web_only")


def _ascii(text: str) -> str:
    text = text.replace("ł", "l").replace("Ł", "L")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([k for k, _ in weighted], weights=[w for _, w in weighted])[0]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


#: mobile prefixes where every number of the remaining seven digits is valid (checked by tests/demo with
#: `phonenumbers.is_valid_number`), so each demo phone is linked as an identifier
_MOBILE_PREFIXES = {
    "CZ": ("+42072", "+42073", "+42077", "+42079"),
    "PL": ("+4850", "+4851", "+4853", "+4857", "+4860", "+4866", "+4869", "+4872", "+4873", "+4878", "+4879", "+4888"),
}


def _phone(country: str, seed: int, index: int) -> str:
    """A valid mobile number, unique per index by construction (7_654_321 is coprime with the modulus:
    unique for the first 40 M customers of a seed in CZ, 120 M in PL)."""
    prefixes = _MOBILE_PREFIXES[country]
    n = (seed * 1_009 + index * 7_654_321 + 12_345) % (len(prefixes) * 10**7)
    return f"{prefixes[n // 10**7]}{n % 10**7:07d}"


def _make_customer(seed: int, index: int, rng: random.Random, persona: str | None = None) -> Customer:
    country = "CZ" if rng.random() < 0.72 else "PL"
    gender = "f" if rng.random() < 0.52 else "m"
    first = rng.choice(_FIRST_NAMES[(country, gender)])
    male, female = rng.choice(_LAST_NAMES[country])
    last = female if gender == "f" else male
    city = _pick(rng, _CITIES[country])
    stores = [loc.location_id for loc in LOCATIONS if loc.kind == "store" and loc.city == city]
    persona = persona or _pick(rng, PERSONAS)
    a, b = _ascii(first).lower(), _ascii(last).lower()
    local = rng.choice((f"{a}.{b}{index}", f"{a}{b[0]}{index}", f"{b}.{a}.{index}", f"{a[0]}{b}{index}"))
    email = f"{local}@{rng.choice(_EMAIL_DOMAINS[country])}"
    rng.choice("67" if country == "CZ" else "5678")  # drawn as before: the rest of the world stays the same
    phone = _phone(country, seed, index)
    card = f"LC{(seed * 7_919 + index * 104_729 + 3_000_000_019) % 10**10:010d}"
    member = rng.random() < _LOYALTY_SHARE.get(persona, 0.0)
    return Customer(
        index=index,
        user_id=_uuid(rng),
        first_name=first,
        last_name=last,
        email=email,
        phone=phone,
        loyalty_card=card if member else None,
        country=country,
        city=city,
        preferred_store=rng.choice(stores),
        shoe_size=rng.choice(_SHOE[gender]),
        clothing_size=rng.choice(_CLOTHING[gender]),
        persona=persona,
        email_opt_in=rng.random() < _EMAIL_OPT_IN.get(persona, 0.0),
    )


# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class DemoWorld:
    seed: int
    anchor: datetime
    catalog: tuple[Product, ...]
    locations: tuple[Location, ...]
    sources: tuple[SourceSpec, ...]
    customers: tuple[Customer, ...]
    ad_campaigns: tuple[AdCampaign, ...]
    email_campaigns: tuple[EmailCampaign, ...]
    #: source name -> Segment messages, sorted by timestamp
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def message_count(self) -> int:
        return sum(len(m) for m in self.messages.values())

    def counts_by_source(self) -> dict[str, int]:
        return {s.name: len(self.messages.get(s.name, ())) for s in self.sources}

    def counts_by_event(self) -> Counter[str]:
        """Messages per event: the event name for track, `type: name` for page/screen, the type otherwise."""
        out: Counter[str] = Counter()
        for msg in self.iter_messages():
            if msg["type"] == "track":
                out[msg["event"]] += 1
            elif msg["type"] in ("page", "screen"):
                out[f"{msg['type']}: {msg.get('name')}"] += 1
            else:
                out[msg["type"]] += 1
        return out

    def iter_messages(self) -> Iterator[dict[str, Any]]:
        for source in self.sources:
            yield from self.messages.get(source.name, ())

    def source(self, name: str) -> SourceSpec:
        return next(s for s in self.sources if s.name == name)

    def product(self, product_id: str) -> Product:
        return next(p for p in self.catalog if p.product_id == product_id)

    def location(self, location_id: str) -> Location:
        return next(loc for loc in self.locations if loc.location_id == location_id)

    @property
    def hero(self) -> Customer | None:
        """The customer whose story is the brief's golden path (index 0)."""
        return self.customers[0] if self.customers else None


def build_world(*, customers: int, seed: int, anchor: datetime) -> DemoWorld:
    """The demo world of `customers` customers over the 90 days before `anchor` (UTC)."""
    if customers < 1:
        raise ValueError("the demo world needs at least one customer")
    anchor = anchor.replace(tzinfo=UTC) if anchor.tzinfo is None else anchor.astimezone(UTC)
    catalog = build_catalog()
    shared = _Shared(seed=seed, anchor=anchor, catalog=catalog)
    out: dict[str, list[dict[str, Any]]] = {s.name: [] for s in SOURCES}
    people = []
    for index in range(customers):
        rng = random.Random(f"omnijourney-demo:{seed}:{index}")
        persona = _forced_persona(index, customers)
        customer = _make_customer(seed, index, rng, persona)
        if index == 0:
            customer = _hero(customer, seed)
        if index % 41 == 7 and customer.loyalty_card is None:  # the junk-phone store visit needs a card
            customer = _with_card(customer, seed)
        people.append(customer)
        _Life(shared, customer, rng, out).live(customers)
    for msgs in out.values():
        msgs.sort(key=lambda m: (m["timestamp"], m["messageId"]))
    return DemoWorld(
        seed=seed,
        anchor=anchor,
        catalog=catalog,
        locations=LOCATIONS,
        sources=SOURCES,
        customers=tuple(people),
        ad_campaigns=AD_CAMPAIGNS,
        email_campaigns=EMAIL_CAMPAIGNS,
        messages=out,
    )


def _forced_persona(index: int, customers: int) -> str | None:
    if index in (0, 1, 2):  # the showcase stories
        return "omnichannel"
    if _tablet_pair(index, customers) is not None:
        return "omnichannel"
    return None


def _tablet_pair(index: int, customers: int) -> tuple[int, int] | None:
    """Customers (20, 21), (70, 71), ... share a family tablet (when both exist)."""
    first = index if index % 50 == 20 else index - 1 if index % 50 == 21 else None
    if first is None or first + 1 >= customers:
        return None
    return first, first + 1


def _hero(c: Customer, seed: int) -> Customer:
    from dataclasses import replace

    email = f"jana.novakova{c.index}@seznam.cz"
    return replace(
        c,
        first_name="Jana",
        last_name="Nováková",
        email=email,
        country="CZ",
        city="Praha",
        preferred_store="store-praha-1",
        phone=_phone("CZ", seed, c.index),
        shoe_size=38,
        clothing_size="S",
        email_opt_in=True,
        loyalty_card=c.loyalty_card or f"LC{(c.index * 104_729 + 3_000_000_019) % 10**10:010d}",
    )


def _with_card(c: Customer, seed: int) -> Customer:
    from dataclasses import replace

    return replace(c, loyalty_card=f"LC{(seed * 7_919 + c.index * 104_729 + 3_000_000_019) % 10**10:010d}")


# --------------------------------------------------------------------------- journey machinery


@dataclass
class _Shared:
    seed: int
    anchor: datetime
    catalog: tuple[Product, ...]
    by_id: dict[str, Product] = field(init=False)
    by_category: dict[str, list[Product]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {p.product_id: p for p in self.catalog}
        self.by_category = {}
        for p in self.catalog:
            self.by_category.setdefault(p.category, []).append(p)

    @property
    def start(self) -> datetime:
        return self.anchor - timedelta(days=HISTORY_DAYS)


@dataclass
class _Device:
    kind: str  # mobile, desktop, tablet, app
    anonymous_id: str
    context: dict[str, Any]


@dataclass
class _Session:
    source: str  # web or app
    device: _Device
    user_id: str | None
    t: datetime
    campaign: dict[str, str] | None = None
    referrer: str | None = None
    page: dict[str, Any] | None = None


@dataclass
class _Order:
    order_id: str
    source: str  # web, app or pos
    time: datetime
    lines: list[dict[str, Any]]
    currency: str
    total: float
    fulfilment: str  # click_and_collect, ship, in_store
    store_id: str | None
    device: _Device | None = None
    cart_id: str | None = None
    #: the device an anonymous cart was started on before the customer signed in elsewhere
    started_on: _Device | None = None

    def product_ids(self) -> list[str]:
        return [line["product_id"] for line in self.lines]


@dataclass(frozen=True)
class _FollowUps:
    """The scripted follow-ups of an order in the showcase stories (random when there is none)."""

    chat_topic: str | None = None
    chat_satisfied: bool = True
    call_after_chat: bool = False
    #: the store the customer brings a return to
    return_to: str | None = None
    #: the category of the accessory bought at the click & collect pickup
    pickup_buy: str | None = None
    #: the category of the accessory clicked in the personalised e-mail
    email_click: str | None = None


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_MOBILE_UAS = (
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1",
        "iOS",
        "17.5",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/125.0.0.0 Mobile Safari/537.36",
        "Android",
        "14",
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Mobile Safari/537.36",
        "Android",
        "13",
    ),
)
_DESKTOP_UAS = (
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/125.0.0.0 Safari/537.36",
        "Windows",
        "10",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Safari/605.1.15",
        "macOS",
        "14.4",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0",
        "Windows",
        "11",
    ),
)
_TABLET_UA = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "iPadOS",
    "17.4",
)
_APP_DEVICES = (
    ("ios", "Apple", "iPhone15,2", "iPhone 14 Pro", "iOS", "17.5"),
    ("ios", "Apple", "iPhone16,1", "iPhone 15", "iOS", "17.4"),
    ("android", "samsung", "SM-S921B", "Galaxy S24", "Android", "14"),
    ("android", "Google", "Pixel 8", "Pixel 8", "Android", "14"),
    ("android", "Xiaomi", "23117RA68G", "Redmi Note 13", "Android", "13"),
)
_APP = {"name": "Horizont", "version": "4.12.0", "build": "4120", "namespace": "example.horizont.app"}
_WEB_LIBRARY = {"name": "analytics.js", "version": "npm:next-1.72.0"}
_SERVER_LIBRARY = {"name": "analytics-python", "version": "2.3.3"}
_IOS_LIBRARY = {"name": "analytics-swift", "version": "1.5.11"}
_ANDROID_LIBRARY = {"name": "analytics-kotlin", "version": "1.16.3"}

_STAFF = {loc.location_id: [f"{loc.location_id}-staff-{n}" for n in range(1, 6)] for loc in LOCATIONS}
_AGENTS = [f"agent-{n:02d}" for n in range(1, 13)]
_CALL_AGENTS = [f"cc-agent-{n:02d}" for n in range(1, 9)]

# support texts per language: topic -> (customer opening, bot, agent answer, customer follow-up, agent close)
_CHAT: dict[str, dict[str, tuple[str, str, str, str, str]]] = {
    "cs": {
        "where_is_my_order": (
            "Dobrý den, kdy mi dorazí objednávka {order_id}?",
            "Dobrý den, jsem virtuální asistent. Přepojuji vás na kolegu, který se na to podívá.",
            "Dobrý den, objednávka {order_id} je předaná dopravci, doručení čekáme zítra.",
            "Můžu si to nechat doručit jinam?",
            "Změnu adresy jsem předala dopravci. Hezký den!",
        ),
        "pickup_question": (
            "Dobrý den, můžu si objednávku {order_id} vyzvednout až o víkendu?",
            "Dobrý den, jsem virtuální asistent. Hned vás spojím s kolegou z prodejny.",
            "Dobrý den, objednávka na vás na prodejně počká 7 dní.",
            "A může ji vyzvednout manžel?",
            "Ano, stačí mu kód pro vyzvednutí z e-mailu. Hezký den!",
        ),
        "size_exchange": (
            "Dobrý den, {product} z objednávky {order_id} mi jsou malé, můžu je vyměnit?",
            "Dobrý den, jsem virtuální asistent. Výměny řeší kolegové, přepojuji.",
            "Dobrý den, výměnu uděláte na kterékoli naší prodejně, stačí číslo objednávky.",
            "Mají na Chodově větší velikost skladem?",
            "Ano, větší velikost je skladem. Rezervovala jsem vám ji na 3 dny.",
        ),
        "product_question": (
            "Dobrý den, jak se starat o {product}?",
            "Dobrý den, jsem virtuální asistent. Zkusím to, nebo vás přepojím na kolegu.",
            "Dobrý den, doporučujeme ruční mytí ve vlažné vodě a sušení mimo topení.",
            "Děkuji, a hodí se k tomu nějaké doplňky?",
            "Posílám tipy na doplňky, které se k vašemu nákupu hodí. Hezký den!",
        ),
        "product_setup": (
            "Dobrý den, jak spáruji {product} z nákupu {order_id} s telefonem?",
            "Dobrý den, jsem virtuální asistent. Přepojuji vás na kolegu, který vám to vysvětlí.",
            "Dobrý den, v aplikaci výrobce zvolte Přidat zařízení a potvrďte kód na displeji.",
            "Funguje to, děkuji. Vydrží baterie celý maraton?",
            "Ano, s GPS vydrží přes 20 hodin. Hodně štěstí na maratonu!",
        ),
    },
    "pl": {
        "where_is_my_order": (
            "Dzień dobry, kiedy dotrze zamówienie {order_id}?",
            "Dzień dobry, jestem wirtualnym asystentem. Przekazuję rozmowę konsultantowi.",
            "Dzień dobry, zamówienie {order_id} jest u kuriera, dostawa jutro.",
            "Czy mogę zmienić adres dostawy?",
            "Zmieniłam adres u kuriera. Miłego dnia!",
        ),
        "pickup_question": (
            "Dzień dobry, czy mogę odebrać zamówienie {order_id} dopiero w weekend?",
            "Dzień dobry, jestem wirtualnym asystentem. Łączę z kolegą ze sklepu.",
            "Dzień dobry, zamówienie poczeka w sklepie 7 dni.",
            "Czy może je odebrać mąż?",
            "Tak, wystarczy kod odbioru z e-maila. Miłego dnia!",
        ),
        "size_exchange": (
            "Dzień dobry, {product} z zamówienia {order_id} są za małe, czy mogę je wymienić?",
            "Dzień dobry, jestem wirtualnym asystentem. Wymianami zajmuje się konsultant.",
            "Dzień dobry, wymiany dokonasz w każdym naszym sklepie, wystarczy numer zamówienia.",
            "Czy w sklepie jest większy rozmiar?",
            "Tak, większy rozmiar jest dostępny. Zarezerwowałam go na 3 dni.",
        ),
        "product_question": (
            "Dzień dobry, jak dbać o {product}?",
            "Dzień dobry, jestem wirtualnym asystentem. Spróbuję pomóc albo połączę z konsultantem.",
            "Dzień dobry, zalecamy ręczne mycie w letniej wodzie i suszenie z dala od grzejnika.",
            "Dziękuję, a jakie akcesoria pasują?",
            "Wysyłam propozycje akcesoriów do Twojego zakupu. Miłego dnia!",
        ),
        "product_setup": (
            "Dzień dobry, jak sparować {product} z zakupu {order_id} z telefonem?",
            "Dzień dobry, jestem wirtualnym asystentem. Łączę z konsultantem, który to wyjaśni.",
            "Dzień dobry, w aplikacji producenta wybierz Dodaj urządzenie i potwierdź kod na ekranie.",
            "Działa, dziękuję. Czy bateria wytrzyma cały maraton?",
            "Tak, z GPS ponad 20 godzin. Powodzenia na maratonie!",
        ),
    },
}
_CALL_NOTES = {
    "where_is_my_order": "Customer asks where order {order_id} is.",
    "pickup_question": "Customer asks about picking up order {order_id}.",
    "size_exchange": "Customer wants to exchange a size from order {order_id}.",
    "product_question": "Customer has a question about a product from order {order_id}.",
    "product_setup": "Customer needs help setting up a product from order {order_id}.",
}
_RETURN_REASONS = ("wrong_size", "changed_mind", "damaged", "not_as_described", "found_cheaper")


class _Life:
    """One customer's 90 days: the journeys their persona leads to, as Segment messages."""

    def __init__(self, shared: _Shared, customer: Customer, rng: random.Random, out: dict[str, list[dict]]) -> None:
        self.w = shared
        self.c = customer
        self.rng = rng
        self.out = out
        self.k = 0
        self.n_orders = 0
        self.devices: dict[str, _Device] = {}
        #: device kinds on which the customer is logged in
        self.logged_in: set[str] = set()
        #: whether the POS knows the customer's account (the loyalty card is linked to it)
        self.card_linked = customer.has_account
        self.points = 0
        self.unsubscribed = False
        self.app_installed = False
        self.forced = False
        #: product ids bought so far (recommendations leave them out)
        self.bought: set[str] = set()
        #: the support chat tool's own contact id, once the customer has chatted
        self.chat_contact: str | None = None
        #: the restocking habit's own random stream (see `restock_plan`)
        self.restock_rng = random.Random(f"omnijourney-demo:{shared.seed}:restock:{customer.index}")

    # -- primitives --------------------------------------------------------------------

    def chance(self, p: float) -> bool:
        """A drop-off or branch; always taken inside `forcing()` (the scripted stories)."""
        hit = self.rng.random() < p
        return True if self.forced else hit

    @contextmanager
    def forcing(self) -> Iterator[None]:
        self.forced = True
        try:
            yield
        finally:
            self.forced = False

    def secs(self, lo: float, hi: float) -> timedelta:
        return timedelta(seconds=self.rng.uniform(lo, hi))

    def hours(self, lo: float, hi: float) -> timedelta:
        return timedelta(hours=self.rng.uniform(lo, hi))

    def days(self, lo: float, hi: float) -> timedelta:
        return timedelta(days=self.rng.uniform(lo, hi))

    def at_hour(self, day: datetime, lo: int, hi: int) -> datetime:
        """A time on `day`'s date between lo:00 and hi:00 UTC."""
        return day.replace(
            hour=self.rng.randrange(lo, hi),
            minute=self.rng.randrange(60),
            second=self.rng.randrange(60),
            microsecond=self.rng.randrange(1000) * 1000,
        )

    def call_hours(self, t: datetime) -> datetime:
        """The first moment support (chat, call centre) answers (07:00-19:00 UTC) at or after t."""
        if t.hour < 7:
            return self.at_hour(t, 7, 9)
        if t.hour >= 19:
            return self.at_hour(t + timedelta(days=1), 7, 9)
        return t

    def store_hours(self, t: datetime) -> datetime:
        """The first moment a store is open (08:00-18:00 UTC) at or after t."""
        if t.hour < 8:
            return self.at_hour(t, 8, 10)
        if t.hour >= 18:
            return self.at_hour(t + timedelta(days=1), 8, 11)
        return t

    def day_offset(self, days_before: float) -> datetime:
        return self.w.anchor - timedelta(days=days_before)

    def emit(
        self,
        source: str,
        when: datetime,
        kind: str,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        event: str | None = None,
        name: str | None = None,
        properties: dict[str, Any] | None = None,
        traits: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.k += 1  # ids stay stable whether or not the event falls before the anchor
        if when >= self.w.anchor:
            return
        msg: dict[str, Any] = {"type": kind, "messageId": f"demo-{self.w.seed}-{self.c.index}-{self.k}"}
        if user_id:
            msg["userId"] = user_id
        if anonymous_id:
            msg["anonymousId"] = anonymous_id
        if event:
            msg["event"] = event
        if name:
            msg["name"] = name
        if properties is not None:
            msg["properties"] = properties
        if traits is not None:
            msg["traits"] = traits
        msg["context"] = context or {}
        msg["timestamp"] = _iso(when)
        self.out[source].append(msg)

    def server_context(self, **extra: Any) -> dict[str, Any]:
        return {"library": dict(_SERVER_LIBRARY), "locale": self.c.locale, **extra}

    def traits(self, *, loyalty: bool = False) -> dict[str, Any]:
        c = self.c
        t: dict[str, Any] = {
            "email": c.email,
            "phone": c.phone,
            "firstName": c.first_name,
            "lastName": c.last_name,
            "name": c.name,
            "address": {"city": c.city, "country": c.country},
            "preferred_store": c.preferred_store,
            "shoe_size": f"EU {c.shoe_size}",  # a size label, as on the products' variants
            "clothing_size": c.clothing_size,
        }
        if loyalty and c.loyalty_card:
            t["loyalty_card"] = c.loyalty_card
        return t

    # -- devices and sessions ----------------------------------------------------------------

    def device(self, kind: str) -> _Device:
        if kind not in self.devices:
            self.devices[kind] = self.new_device(kind)
        return self.devices[kind]

    def new_device(self, kind: str) -> _Device:
        c, rng = self.c, self.rng
        anon = _uuid(rng)
        if kind == "app":
            platform, maker, model, dev_name, os_name, os_version = rng.choice(_APP_DEVICES)
            ctx = {
                "app": dict(_APP),
                "device": {
                    "id": _uuid(rng),
                    "manufacturer": maker,
                    "model": model,
                    "name": dev_name,
                    "type": platform,
                },
                "os": {"name": os_name, "version": os_version},
                "library": dict(_IOS_LIBRARY if platform == "ios" else _ANDROID_LIBRARY),
                "locale": c.locale,
                "timezone": TIMEZONE[c.country],
                "network": {"wifi": rng.random() < 0.6, "cellular": True},
                "screen": {"width": 393, "height": 852} if platform == "ios" else {"width": 412, "height": 915},
            }
            return _Device(kind, anon, ctx)
        ua, os_name, os_version = (
            rng.choice(_MOBILE_UAS)
            if kind == "mobile"
            else _TABLET_UA
            if kind == "tablet"
            else rng.choice(_DESKTOP_UAS)
        )
        ctx = {
            "library": dict(_WEB_LIBRARY),
            "userAgent": ua,
            "locale": c.locale,
            "timezone": TIMEZONE[c.country],
            "device": {"type": kind},
            "os": {"name": os_name, "version": os_version},
        }
        return _Device(kind, anon, ctx)

    def session(
        self,
        kind: str,
        t: datetime,
        *,
        campaign: dict[str, str] | None = None,
        referrer: str | None = None,
        device: _Device | None = None,
    ) -> _Session:
        dev = device or self.device(kind)
        source = "app" if dev.kind == "app" else "web"
        user_id = self.c.user_id if dev.kind in self.logged_in else None
        return _Session(source, dev, user_id, t, campaign, referrer)

    def context(self, s: _Session) -> dict[str, Any]:
        ctx = dict(s.device.context)
        if s.page:
            ctx["page"] = dict(s.page)
        if s.campaign:
            ctx["campaign"] = dict(s.campaign)
        return ctx

    def advance(self, s: _Session, lo: float = 15, hi: float = 120) -> None:
        s.t += self.secs(lo, hi)

    def page(self, s: _Session, name: str, path: str, title: str | None = None) -> None:
        base = SHOP_URLS[self.c.country]
        url = base + path
        if s.campaign and s.page is None:  # the landing page carries the UTM parameters
            url += f"?utm_source={s.campaign['source']}&utm_medium={s.campaign['medium']}&utm_campaign={s.campaign['name']}"
        referrer = s.referrer if s.page is None else s.page["url"]
        s.page = {"path": path, "url": url, "title": f"{title or name} | {RETAILER}", "referrer": referrer or ""}
        props = dict(s.page)
        self.emit(
            "web",
            s.t,
            "page",
            user_id=s.user_id,
            anonymous_id=s.device.anonymous_id,
            name=name,
            properties=props,
            context=self.context(s),
        )

    def screen(self, s: _Session, name: str, properties: dict[str, Any] | None = None) -> None:
        self.emit(
            "app",
            s.t,
            "screen",
            user_id=s.user_id,
            anonymous_id=s.device.anonymous_id,
            name=name,
            properties=properties or {},
            context=self.context(s),
        )

    def track(self, s: _Session, event: str, properties: dict[str, Any]) -> None:
        self.emit(
            s.source,
            s.t,
            "track",
            user_id=s.user_id,
            anonymous_id=s.device.anonymous_id,
            event=event,
            properties=properties,
            context=self.context(s),
        )

    def login(self, s: _Session, *, register: bool = False) -> None:
        """The customer signs in (or registers) on this device: identify with the account id and traits."""
        if s.source == "web":
            self.page(s, "Register" if register else "Login", "/account/register" if register else "/account/login")
            self.advance(s, 10, 40)
        s.user_id = self.c.user_id
        self.logged_in.add(s.device.kind)
        self.emit(
            s.source,
            s.t,
            "identify",
            user_id=s.user_id,
            anonymous_id=s.device.anonymous_id,
            traits=self.traits(loyalty=True),
            context=self.context(s),
        )
        self.advance(s, 2, 10)

    # -- products, carts and orders ---------------------------------------------------------

    def line(self, p: Product, quantity: int = 1, currency: str | None = None) -> dict[str, Any]:
        currency = currency or self.c.currency
        line: dict[str, Any] = {
            "product_id": p.product_id,
            "sku": p.sku,
            "name": p.name,
            "category": p.category,
            "brand": p.brand,
            "price": p.price(currency),
            "quantity": quantity,
        }
        if p.sizing == "shoe":
            line["variant"] = f"EU {self.c.shoe_size}"
        elif p.sizing == "clothing":
            line["variant"] = self.c.clothing_size
        return line

    def product_props(self, p: Product) -> dict[str, Any]:
        props = self.line(p)
        props["currency"] = self.c.currency
        props["url"] = f"{SHOP_URLS[self.c.country]}/p/{p.slug}"
        return props

    def intent_category(self) -> str:
        return _pick(self.rng, _INTENT_CATEGORIES)

    def browse(self, s: _Session, category: str, n: int, first: Product | None = None) -> list[Product]:
        """View n products of a category (the first one given, e.g. an ad's landing product)."""
        pool = list(self.w.by_category[category])
        viewed = [first] if first else []
        rest = [p for p in pool if p not in viewed]
        viewed += self.rng.sample(rest, min(len(rest), max(0, n - len(viewed))))
        for p in viewed:
            if s.source == "web":
                self.page(s, "Product", f"/p/{p.slug}", p.name)
            else:
                self.screen(s, "Product Detail", {"product_id": p.product_id, "name": p.name})
            self.advance(s, 3, 15)
            self.track(s, "Product Viewed", self.product_props(p))
            self.advance(s, 20, 150)
        return viewed

    def add_to_cart(self, s: _Session, cart_id: str, p: Product) -> None:
        self.track(s, "Product Added", {"cart_id": cart_id, **self.product_props(p)})
        self.advance(s, 10, 90)

    def next_order_id(self, prefix: str) -> str:
        self.n_orders += 1
        return f"{prefix}-{self.w.seed}-{self.c.index:05d}{self.n_orders:02d}"

    def totals(
        self, lines: list[dict[str, Any]], currency: str, fulfilment: str, discount_rate: float = 0.0
    ) -> dict[str, float]:
        subtotal = round(sum(line["price"] * line["quantity"] for line in lines), 2)
        discount = round(subtotal * discount_rate, 2)
        revenue = round(subtotal - discount, 2)
        free_over = 1500 if currency == "CZK" else 60
        shipping = 0.0 if fulfilment != "ship" or revenue >= free_over else (99.0 if currency == "CZK" else 3.99)
        rate = VAT[self.c.country]
        tax = round(revenue * rate / (1 + rate), 2)
        return {
            "subtotal": subtotal,
            "discount": discount,
            "revenue": revenue,
            "shipping": shipping,
            "tax": tax,
            "total": round(revenue + shipping, 2),
        }

    def checkout(
        self,
        s: _Session,
        cart_id: str,
        products: list[Product],
        *,
        fulfilment: str | None = None,
        store_id: str | None = None,
        coupon: str | None = None,
        cc_share: float = 0.45,
    ) -> _Order | None:
        """Cart -> Checkout Started -> Order Completed (with drop-offs); the order, if placed."""
        currency = self.c.currency
        lines = [self.line(p, currency=currency) for p in products]
        order_id = self.next_order_id("ORD")
        checkout_id = _uuid(self.rng)
        if s.source == "web":
            self.page(s, "Checkout", "/checkout")
        else:
            self.screen(s, "Checkout")
        self.advance(s, 5, 20)
        if fulfilment is None:
            fulfilment = "click_and_collect" if self.c.persona != "web_only" and self.chance(cc_share) else "ship"
        if fulfilment == "click_and_collect":
            store_id = store_id or (
                self.c.preferred_store if self.rng.random() < 0.85 else self.other_store(self.c.country)
            )
        sums = self.totals(lines, currency, fulfilment, 0.1 if coupon else 0.0)
        self.track(
            s,
            "Checkout Started",
            {
                "checkout_id": checkout_id,
                "order_id": order_id,
                "cart_id": cart_id,
                "value": sums["revenue"],
                "revenue": sums["revenue"],
                "currency": currency,
                "products": lines,
            },
        )
        self.advance(s, 60, 400)
        if not self.chance(0.86):
            return None  # abandoned at checkout (payment, shipping costs, distraction)
        props: dict[str, Any] = {
            "checkout_id": checkout_id,
            "order_id": order_id,
            "cart_id": cart_id,
            "affiliation": f"{RETAILER} e-shop {self.c.country}" if s.source == "web" else f"{RETAILER} app",
            **sums,
            "currency": currency,
            "products": lines,
            "fulfilment": fulfilment,
            "payment_method": self.rng.choice(("card", "card", "apple_pay", "google_pay", "bank_transfer")),
        }
        if store_id:
            props["store_id"] = store_id
        if coupon:
            props["coupon"] = coupon
        self.track(s, "Order Completed", props)
        self.bought.update(p.product_id for p in products)
        order = _Order(order_id, s.source, s.t, lines, currency, sums["total"], fulfilment, store_id, s.device, cart_id)
        self.advance(s, 2, 6)
        if s.source == "web":
            self.page(s, "Order Confirmation", f"/checkout/confirmation/{order_id}")
        else:
            self.screen(s, "Order Confirmation", {"order_id": order_id})
        return order

    def other_store(self, country: str) -> str:
        return self.rng.choice([loc.location_id for loc in LOCATIONS if loc.kind == "store" and loc.country == country])

    # -- scenario 1: ad / organic / direct -> browse -> cart -> (cross-device) -> order ----------

    def shop_online(
        self,
        t: datetime,
        *,
        entry: str,
        first: str = "mobile",
        campaign: AdCampaign | None = None,
        email: EmailCampaign | None = None,
        category: str | None = None,
        products: list[Product] | None = None,
        accessory: Product | None = None,
        cross_device: bool | None = None,
        fulfilment: str | None = None,
        store_id: str | None = None,
        device: _Device | None = None,
        p_add: float = 0.45,
        plan: _FollowUps | None = None,
    ) -> _Order | None:
        c = self.c
        utm: dict[str, str] | None = None
        referrer: str | None = None
        landing: Product | None = products[0] if products else None
        if entry == "ad":
            campaign = campaign or self.rng.choice(
                [a for a in AD_CAMPAIGNS if a.category == category] or list(AD_CAMPAIGNS)
            )
            category = campaign.category
            utm = {"name": campaign.campaign_id, "source": campaign.platform, "medium": campaign.medium}
            if campaign.platform == "google":
                utm["term"] = category.lower()
            else:
                utm["content"] = f"{campaign.campaign_id}-creative-{self.rng.randint(1, 3)}"
            referrer = _AD_REFERRERS[campaign.platform]
        elif entry == "email" and email is not None:
            utm = {"name": email.campaign_id, "source": "newsletter", "medium": "email"}
            category = category or email.category
        elif entry == "organic":
            referrer = "https://www.google.com/"
        category = category or (landing.category if landing else self.intent_category())
        s = self.session(first, t, campaign=utm, referrer=referrer, device=device)
        if entry == "ad" and campaign is not None:
            landing = landing or self.rng.choice(self.w.by_category[category])
            cost = campaign.cost_per_click_czk if c.currency == "CZK" else round(campaign.cost_per_click_czk / 25, 2)
            self.emit(
                "ads",
                s.t,
                "track",
                anonymous_id=s.device.anonymous_id,
                event="Ad Clicked",
                properties={
                    "ad_platform": campaign.platform,
                    "campaign_id": campaign.campaign_id,
                    "campaign_name": campaign.name,
                    "ad_id": f"{campaign.campaign_id}-ad-{self.rng.randint(1, 6)}",
                    "cost": cost,
                    "currency": c.currency,
                    "landing_product_id": landing.product_id,
                },
                context={
                    "library": dict(_WEB_LIBRARY),
                    "userAgent": s.device.context["userAgent"],
                    "locale": c.locale,
                    "device": {"type": s.device.kind},
                    "campaign": dict(utm or {}),
                    "page": {"url": f"{SHOP_URLS[c.country]}/p/{landing.slug}", "referrer": referrer},
                },
            )
            self.advance(s, 1, 4)
        elif landing is None:
            self.page(s, "Home", "/")
            self.advance(s, 5, 40)
            self.page(s, "Category", f"/c/{category.lower().replace(' ', '-')}", category)
            self.advance(s, 10, 60)
        viewed = self.browse(s, category, self.rng.randint(1, 4), first=landing)
        if not self.chance(p_add):
            return None  # browsed, did not add anything (consideration drop-off)
        cart_id = _uuid(self.rng)
        main = products or [viewed[0] if self.rng.random() < 0.6 else self.rng.choice(viewed)]
        for p in main:
            self.add_to_cart(s, cart_id, p)
        if accessory is None and main[0].accessories and self.rng.random() < 0.25:
            accessory = self.w.by_id[self.rng.choice(main[0].accessories)]
        if accessory is not None and s.user_id is None and not c.has_account:
            accessory = None
        basket = list(main)
        started_on: _Device | None = None

        if s.user_id is None:
            if not c.has_account:
                return self.abandon_anonymous(s, cart_id, basket)
            go_desktop = cross_device if cross_device is not None else s.device.kind == "mobile" and self.chance(0.6)
            if go_desktop:
                # scenario 1: the cart started anonymously on the phone is finished on a desktop after login
                started_on = s.device
                later = s.t + self.hours(1.5, 10) if self.rng.random() < 0.7 else s.t + self.days(1, 3)
                later = self.at_hour(later, 17, 22) if later.hour < 6 else later
                s = self.session("desktop", later)
                self.page(s, "Home", "/")
                self.advance(s, 5, 30)
                if s.user_id is None:
                    self.login(s)
            elif self.chance(0.7):
                self.login(s)  # signs in on the same device to check out
            else:
                return None  # anonymous cart, never came back
        if accessory is not None:
            self.add_to_cart(s, cart_id, accessory)
            basket.append(accessory)
        if s.source == "web":
            self.page(s, "Cart", "/cart")
        self.track(s, "Cart Viewed", {"cart_id": cart_id, "products": [self.line(p) for p in basket]})
        self.advance(s, 10, 90)
        if not self.chance(0.78):
            return None  # cart abandoned
        coupon = "NEWS10" if entry == "email" and self.rng.random() < 0.5 else None
        order = self.checkout(s, cart_id, basket, fulfilment=fulfilment, store_id=store_id, coupon=coupon)
        if order is not None:
            order.started_on = started_on
            self.after_online_order(order, plan)
        return order

    def abandon_anonymous(self, s: _Session, cart_id: str, basket: list[Product]) -> None:
        """A window shopper's cart: viewed, sometimes a checkout started, never an order."""
        self.page(s, "Cart", "/cart")
        self.track(s, "Cart Viewed", {"cart_id": cart_id, "products": [self.line(p) for p in basket]})
        if self.rng.random() < 0.25:
            self.advance(s, 20, 90)
            self.page(s, "Checkout", "/checkout")
            self.track(
                s,
                "Checkout Started",
                {
                    "cart_id": cart_id,
                    "currency": self.c.currency,
                    "value": round(sum(p.price(self.c.currency) for p in basket), 2),
                    "products": [self.line(p) for p in basket],
                },
            )
        return None

    # -- app sessions ------------------------------------------------------------------

    def app_session(self, t: datetime, *, p_add: float = 0.4) -> _Order | None:
        s = self.session("app", t)
        if not self.app_installed:
            self.app_installed = True
            self.track(s, "Application Installed", {"version": _APP["version"], "build": _APP["build"]})
            self.advance(s, 5, 30)
        self.track(s, "Application Opened", {"from_background": False, "version": _APP["version"]})
        self.advance(s, 1, 5)
        if s.user_id is None:
            self.screen(s, "Login")
            self.advance(s, 10, 40)
            self.login(s)
        self.screen(s, "Home")
        self.advance(s, 5, 30)
        category = self.intent_category()
        self.screen(s, "Category", {"category": category})
        self.advance(s, 5, 30)
        viewed = self.browse(s, category, self.rng.randint(1, 3))
        if not self.chance(p_add):
            return None
        cart_id = _uuid(self.rng)
        basket = [viewed[-1]]
        self.add_to_cart(s, cart_id, basket[0])
        if basket[0].accessories and self.rng.random() < 0.3:
            basket.append(self.w.by_id[self.rng.choice(basket[0].accessories)])
            self.add_to_cart(s, cart_id, basket[-1])
        self.screen(s, "Cart")
        self.track(s, "Cart Viewed", {"cart_id": cart_id, "products": [self.line(p) for p in basket]})
        self.advance(s, 10, 60)
        if not self.chance(0.75):
            return None
        order = self.checkout(s, cart_id, basket, cc_share=0.5)
        if order is not None:
            self.after_online_order(order)
        return order

    # -- after an online order: pickup (2), chat and calls (3), returns (5), e-mail (6) ----------

    def after_online_order(self, order: _Order, plan: _FollowUps | None = None) -> datetime | None:
        phone = order.started_on
        if phone is not None and phone.kind not in self.logged_in and self.chance(0.5):
            # checks the order on the phone the cart was started on: signing in there stitches the
            # anonymous ad click and browsing to the customer
            s = self.session(phone.kind, self.call_hours(order.time + self.hours(10, 30)), device=phone)
            self.page(s, "Home", "/")
            self.advance(s, 3, 20)
            self.login(s)
            self.page(s, "Order Status", f"/account/orders/{order.order_id}")
        if order.fulfilment == "click_and_collect":
            done = self.pickup(order, buy=plan.pickup_buy if plan else None)
        else:
            done = order.time + self.days(1, 3)  # delivered
        if done is None:
            return None
        if plan is not None:
            if plan.chat_topic:
                self.support_chat(
                    order,
                    self.call_hours(done + self.days(0.5, 3)),
                    topic=plan.chat_topic,
                    satisfied=plan.chat_satisfied,
                    call=plan.call_after_chat,
                )
            if plan.return_to:
                self.return_order(order, done + self.days(2, 6), store_id=plan.return_to)
            if plan.email_click:
                self.accessories_email(order, self.at_hour(done + self.days(5, 8), 7, 9), click=plan.email_click)
            return done
        multichannel = self.c.persona != "web_only"
        if multichannel and self.chance(0.16):
            self.support_chat(order, self.call_hours(done + self.days(0.1, 4)))
        elif multichannel and self.chance(0.03):
            self.call(order, self.call_hours(done + self.days(0.5, 6)), topic="product_question")
        if multichannel and self.chance(0.09):
            self.return_order(order, done + self.days(2, 12))
        if self.c.email_opt_in and not self.unsubscribed and self.chance(0.45):
            self.accessories_email(order, self.at_hour(done + self.days(5, 10), 7, 9))
        return done

    def pos_context(self, store_id: str) -> dict[str, Any]:
        # the till is not the customer's device: it goes in its own key, not context.device.id
        till = f"{store_id}-pos-{self.rng.randint(1, 4):02d}"
        return self.server_context(pos={"store_id": store_id, "terminal_id": till})

    def pickup(self, order: _Order, *, buy: str | None = None) -> datetime | None:
        """Scenario 2: click & collect. The store makes the order ready; the customer picks it up."""
        c = self.c
        store_id = order.store_id or c.preferred_store
        ready = self.store_hours(order.time + self.hours(3, 26))
        self.emit(
            "pos",
            ready,
            "track",
            user_id=c.user_id,
            event="Order Ready for Pickup",
            properties={
                "order_id": order.order_id,
                "store_id": store_id,
                "pickup_code": f"{self.rng.randrange(10**6):06d}",
                "products": order.lines,
                "hold_until": _iso(ready + timedelta(days=7)),
            },
            context=self.pos_context(store_id),
        )
        if c.email_opt_in or self.rng.random() < 0.8:  # transactional: sent to everyone with an address
            email_id = _uuid(self.rng)
            self.email_event(
                "Email Delivered", ready + self.secs(20, 120), PICKUP_READY_EMAIL, email_id, "transactional"
            )
            if self.chance(0.75):
                self.email_event(
                    "Email Opened", ready + self.hours(0.05, 5), PICKUP_READY_EMAIL, email_id, "transactional"
                )
        if not self.chance(0.95):
            return None  # never collected
        t = self.store_hours(ready + self.hours(2, 80))
        visit = _uuid(self.rng)
        staff = self.rng.choice(_STAFF[store_id])
        scanned = bool(c.loyalty_card) and self.chance(0.6)
        if scanned:
            self.emit(
                "pos",
                t,
                "identify",
                user_id=c.user_id,
                anonymous_id=visit,
                traits={"loyalty_card": c.loyalty_card, "firstName": c.first_name, "lastName": c.last_name},
                context=self.pos_context(store_id),
            )
        self.store_visited(
            t, store_id, visit, reason="click_and_collect", staff=staff, user_id=c.user_id, recognised=scanned
        )
        t += self.secs(60, 300)
        offered = self.offer_accessories(order.product_ids())
        self.emit(
            "pos",
            t,
            "track",
            user_id=c.user_id,
            anonymous_id=visit,
            event="Order Picked Up",
            properties={
                "order_id": order.order_id,
                "store_id": store_id,
                "staff_id": staff,
                "accessories_offered": offered,
            },
            context=self.pos_context(store_id),
        )
        if buy is not None:  # scripted: the accessory of that category the staff offered
            picks = [p for p in offered if self.w.by_id[p].category == buy][:1] or offered[:1]
        elif offered and self.chance(0.3):
            picks = offered[: self.rng.randint(1, min(2, len(offered)))]
        else:
            picks = []
        if picks:
            t += self.secs(60, 400)
            self.pos_order(t, store_id, [self.w.by_id[p] for p in picks], visit=visit, staff=staff)
        return t

    def offer_accessories(self, bought: list[str]) -> list[str]:
        """Up to four accessories of what was bought, one per category first, none already owned."""
        owned = set(bought) | self.bought
        candidates = dict.fromkeys(acc for pid in bought for acc in self.w.by_id[pid].accessories if acc not in owned)
        first: list[str] = []
        rest: list[str] = []
        categories: set[str] = set()
        for acc in candidates:
            category = self.w.by_id[acc].category
            (rest if category in categories else first).append(acc)
            categories.add(category)
        return (first + rest)[:4]

    def store_visited(
        self,
        t: datetime,
        store_id: str,
        visit: str,
        *,
        reason: str,
        staff: str,
        user_id: str | None,
        recognised: bool = True,
    ) -> None:
        loc = _LOCATION[store_id]
        props: dict[str, Any] = {
            "store_id": store_id,
            "store_name": loc.name,
            "city": loc.city,
            "visit_id": visit,
            "reason": reason,
            "assisted_by": staff,
        }
        if recognised and self.c.loyalty_card:
            props["loyalty_card"] = self.c.loyalty_card
        self.emit(
            "pos",
            t,
            "track",
            user_id=user_id,
            anonymous_id=visit,
            event="Store Visited",
            properties=props,
            context=self.pos_context(store_id),
        )

    def pos_order(
        self, t: datetime, store_id: str, products: list[Product], *, visit: str, staff: str, card: bool = True
    ) -> _Order:
        loc = _LOCATION[store_id]
        currency = loc.currency
        lines = [self.line(p, currency=currency) for p in products]
        sums = self.totals(lines, currency, "in_store")
        user_id = self.c.user_id if self.card_linked and card else None
        order_id = self.next_order_id(f"POS-{_ascii(loc.city)[:3].upper()}")
        self.emit(
            "pos",
            t,
            "track",
            user_id=user_id,
            anonymous_id=visit,
            event="Order Completed",
            properties={
                "order_id": order_id,
                "affiliation": loc.name,
                **sums,
                "currency": currency,
                "products": lines,
                "fulfilment": "in_store",
                "store_id": store_id,
                "staff_id": staff,
                "payment_method": self.rng.choice(("card", "card", "card", "cash", "apple_pay")),
            },
            context=self.pos_context(store_id),
        )
        self.bought.update(p.product_id for p in products)
        if card and self.c.loyalty_card:
            points = int(sums["total"] // 10) if currency == "CZK" else int(sums["total"] * 2.5)
            self.points += points
            self.emit(
                "pos",
                t + self.secs(1, 5),
                "track",
                user_id=user_id,
                anonymous_id=visit,
                event="Loyalty Points Earned",
                properties={
                    "loyalty_card": self.c.loyalty_card,
                    "points": points,
                    "balance": self.points,
                    "order_id": order_id,
                    "store_id": store_id,
                },
                context=self.pos_context(store_id),
            )
        return _Order(order_id, "pos", t, lines, currency, sums["total"], "in_store", store_id)

    # -- scenario 4: store visits with a loyalty card ----------------------------------------

    def store_visit(
        self,
        t: datetime,
        *,
        store_id: str | None = None,
        products: list[Product] | None = None,
        junk_phone: bool = False,
    ) -> _Order | None:
        c = self.c
        store_id = store_id or (c.preferred_store if self.rng.random() < 0.8 else self.other_store(c.country))
        visit = _uuid(self.rng)
        staff = self.rng.choice(_STAFF[store_id])
        scanned = bool(c.loyalty_card) and (junk_phone or self.chance(0.9))
        user_id = c.user_id if self.card_linked and scanned else None
        if scanned:
            traits: dict[str, Any] = {
                "loyalty_card": c.loyalty_card,
                "firstName": c.first_name,
                "lastName": c.last_name,
            }
            if junk_phone:
                traits["phone"] = JUNK_PHONE  # the cashier typed a placeholder
                traits["birthday"] = JUNK_BIRTHDAY  # and skipped the birthday: a refused trait (type datetime)
            elif self.rng.random() < 0.7:
                traits["phone"] = c.phone
            if not c.has_account and self.rng.random() < 0.4:
                traits["email"] = c.email
            self.emit(
                "pos",
                t,
                "identify",
                user_id=user_id,
                anonymous_id=visit,
                traits=traits,
                context=self.pos_context(store_id),
            )
            self.store_visited(t + self.secs(1, 5), store_id, visit, reason="shopping", staff=staff, user_id=user_id)
        t += self.secs(300, 2400)
        if products is None:
            if not self.chance(0.62):
                return None  # browsed, bought nothing
            main = self.rng.choice(self.w.by_category[self.intent_category()])
            products = [main]
            if main.accessories and self.rng.random() < 0.4:  # staff offered a matching accessory
                products.append(self.w.by_id[self.rng.choice(main.accessories)])
        if scanned and self.points >= 500 and self.rng.random() < 0.3:
            redeemed = 500
            self.points -= redeemed
            self.emit(
                "pos",
                t,
                "track",
                user_id=user_id,
                anonymous_id=visit,
                event="Loyalty Points Redeemed",
                properties={"loyalty_card": c.loyalty_card, "points": redeemed, "balance": self.points},
                context=self.pos_context(store_id),
            )
            t += self.secs(5, 30)
        order = self.pos_order(t, store_id, products, visit=visit, staff=staff, card=scanned)
        if c.persona != "window_shopper":
            if self.chance(0.04):
                self.return_order(order, self.store_hours(t + self.days(2, 14)))
            elif self.chance(0.03):
                self.call(order, self.call_hours(t + self.days(1, 10)), topic="product_question")
        return order

    def sign_up_online(self, t: datetime) -> None:
        """A store-only loyalty member creates an e-shop account and links the card."""
        s = self.session("desktop", t)
        self.page(s, "Home", "/")
        self.advance(s, 5, 30)
        self.login(s, register=True)
        self.card_linked = True
        self.browse(s, self.intent_category(), self.rng.randint(1, 2))

    # -- scenario 3: support chat, then a call the next day (lost context) --------------------

    def support_chat(
        self,
        order: _Order,
        t: datetime,
        *,
        topic: str | None = None,
        satisfied: bool | None = None,
        call: bool | None = None,
    ) -> datetime:
        c = self.c
        if topic is None:
            options = ["product_question", "size_exchange"]
            options.append("pickup_question" if order.fulfilment == "click_and_collect" else "where_is_my_order")
            topic = self.rng.choice(options)
        texts = _CHAT[c.language][topic]
        product = self.w.by_id[order.lines[0]["product_id"]].name
        fmt = {"order_id": order.order_id, "product": product}
        conv = f"conv-{_uuid(self.rng)}"
        agent = self.rng.choice(_AGENTS)
        dev = self.devices.get("app") if order.source == "app" else self.devices.get("desktop")
        anon = dev.anonymous_id if dev else None
        if self.chat_contact is None:
            self.chat_contact = "ct_" + _uuid(self.rng).replace("-", "")[:16]
        ctx = self.server_context(chat={"contact_id": self.chat_contact})
        entry = "app" if order.source == "app" else "web_widget"
        base = {"user_id": c.user_id, "anonymous_id": anon, "context": ctx}
        start = t
        self.emit(
            "chat",
            t,
            "track",
            event="Conversation Started",
            properties={
                "conversation_id": conv,
                "channel": "chat",
                "order_id": order.order_id,
                "topic": topic,
                "entry_point": entry,
                "language": c.language,
            },
            **base,
        )
        n = 0

        def say(author: str, text: str, when: datetime) -> None:
            nonlocal n
            n += 1
            props = {"conversation_id": conv, "message_id": f"{conv}-m{n}", "author": author, "text": text}
            if author == "agent":
                props["agent_id"] = agent
            self.emit("chat", when, "track", event="Message Sent", properties=props, **base)

        t += self.secs(1, 5)
        say("customer", texts[0].format(**fmt), t)
        t += self.secs(2, 6)
        say("bot", texts[1], t)
        t += self.secs(30, 900)
        self.emit(
            "chat",
            t,
            "track",
            event="Conversation Assigned",
            properties={"conversation_id": conv, "assignee": agent, "team": f"support-{c.country.lower()}"},
            **base,
        )
        t += self.secs(20, 240)
        say("agent", texts[2].format(**fmt), t)
        t += self.secs(30, 300)
        say("customer", texts[3].format(**fmt), t)
        t += self.secs(30, 400)
        say("agent", texts[4].format(**fmt), t)
        t += self.secs(60, 600)
        good = satisfied if satisfied is not None else self.rng.random() < 0.7
        self.emit(
            "chat",
            t,
            "track",
            event="Conversation Resolved",
            properties={
                "conversation_id": conv,
                "order_id": order.order_id,
                "resolution": "answered" if good else "answered_unconfirmed",
                "duration_seconds": round((t - start).total_seconds(), 1),
                "message_count": n,
                "agent_id": agent,
            },
            **base,
        )
        if satisfied is not None or self.chance(0.6):
            score = self.rng.choice((4, 5, 5)) if good else self.rng.choice((1, 2, 2, 3))
            if satisfied is True:
                score = 5
            self.emit(
                "chat",
                t + self.secs(10, 600),
                "track",
                event="Survey Responded",
                properties={"survey_type": "csat", "score": score, "conversation_id": conv},
                **base,
            )
        if call if call is not None else self.chance(0.12 if good else 0.45):
            # the customer calls the next day about the same order and explains everything again
            self.call(order, self.call_hours(t + self.hours(12, 30)), topic=topic, repeat_of=conv)
        return t

    def call(self, order: _Order, t: datetime, *, topic: str, repeat_of: str | None = None) -> None:
        c = self.c
        call_id = f"call-{_uuid(self.rng)}"
        user_id = c.user_id if c.has_account or self.card_linked else None
        agent = self.rng.choice(_CALL_AGENTS)
        ctx = self.server_context()
        self.emit(
            "call_center",
            t,
            "identify",
            user_id=user_id,
            anonymous_id=call_id,
            traits={"phone": c.phone, "firstName": c.first_name, "lastName": c.last_name},
            context=ctx,
        )
        notes = _CALL_NOTES[topic].format(order_id=order.order_id)
        if repeat_of:
            notes += " Says they already discussed it in the chat yesterday and had to explain it all again."
        wait = round(self.rng.uniform(10, 420), 1)
        duration = round(self.rng.uniform(120, 900) + (180 if repeat_of else 0), 1)
        end = t + timedelta(seconds=wait + duration)
        self.emit(
            "call_center",
            end,
            "track",
            user_id=user_id,
            anonymous_id=call_id,
            event="Call Completed",
            properties={
                "call_id": call_id,
                "order_id": order.order_id,
                "direction": "inbound",
                "topic": topic,
                "agent_id": agent,
                "wait_seconds": wait,
                "duration_seconds": duration,
                "resolved": self.rng.random() < 0.85,
                "notes": notes,
                "caller_phone": c.phone,
            },
            context=ctx,
        )
        if self.chance(0.35):
            score = self.rng.randint(0, 6) if repeat_of else self.rng.randint(5, 10)
            self.emit(
                "call_center",
                end + self.secs(30, 300),
                "track",
                user_id=user_id,
                anonymous_id=call_id,
                event="Survey Responded",
                properties={"survey_type": "nps", "score": score, "call_id": call_id},
                context=ctx,
            )

    # -- scenario 5: returns anywhere ------------------------------------------------------

    def return_order(self, order: _Order, t: datetime, *, store_id: str | None = None) -> None:
        c = self.c
        item = order.lines[0]
        return_id = f"RET-{order.order_id}"
        reason = self.rng.choice(_RETURN_REASONS)
        by_courier = False
        if order.source in ("web", "app"):
            dev = order.device or self.device("desktop")
            s = _Session(order.source, dev, c.user_id, t)
            by_courier = store_id is None and order.fulfilment == "ship" and self.rng.random() < 0.3
            if s.source == "web":
                self.page(s, "Returns", f"/account/orders/{order.order_id}/return")
                self.advance(s, 20, 120)
            self.track(
                s,
                "Return Requested",
                {
                    "order_id": order.order_id,
                    "return_id": return_id,
                    "products": [item],
                    "reason": reason,
                    "return_method": "courier" if by_courier else "store",
                },
            )
            if not self.chance(0.9):
                return  # requested, never sent back
            t = self.store_hours(t + self.days(1, 6))
        location = (
            "warehouse-1"
            if by_courier
            else store_id or (c.preferred_store if self.rng.random() < 0.7 else self.other_store(c.country))
        )
        condition = "unopened" if self.rng.random() < 0.8 else "damaged"
        ctx = self.pos_context(location) if location != "warehouse-1" else self.server_context()
        self.emit(
            "pos",
            t,
            "track",
            user_id=c.user_id if self.card_linked or order.source != "pos" else None,
            anonymous_id=return_id,
            event="Return Received",
            properties={
                "order_id": order.order_id,
                "return_id": return_id,
                "store_id": location,
                "products": [item],
                "condition": condition,
                "restock": condition == "unopened",
                "reason": reason,
            },
            context=ctx,
        )
        refund = round(item["price"] * item["quantity"], 2)
        self.emit(
            "pos",
            t + self.secs(60, 600),
            "track",
            user_id=c.user_id if self.card_linked or order.source != "pos" else None,
            anonymous_id=return_id,
            event="Order Refunded",
            properties={
                "order_id": order.order_id,
                "return_id": return_id,
                "total": refund,
                "currency": order.currency,
                "products": [item],
                "store_id": location,
            },
            context=ctx,
        )

    # -- scenario 6: e-mail --------------------------------------------------------------

    def email_event(self, event: str, t: datetime, campaign_id: str, email_id: str, kind: str, **props: Any) -> None:
        c = self.c
        subject = next((e.subject[c.language] for e in EMAIL_CAMPAIGNS if e.campaign_id == campaign_id), None)
        properties: dict[str, Any] = {
            "email_id": email_id,
            "campaign_id": campaign_id,
            "email_type": kind,
            **props,
        }
        if subject:
            properties["email_subject"] = subject
        self.emit(
            "email",
            t,
            "track",
            user_id=c.user_id,
            event=event,
            properties=properties,
            context=self.server_context(traits={"email": c.email}),
        )

    def campaign_email(self, campaign: EmailCampaign, t: datetime, *, allow_click: bool = True) -> None:
        if self.unsubscribed:
            return
        email_id = _uuid(self.rng)
        self.email_event("Email Delivered", t, campaign.campaign_id, email_id, "marketing")
        p_open = 0.45 if self.c.persona == "omnichannel" else 0.32
        if not self.chance(p_open):
            return
        opened = t + (self.hours(0.1, 6) if self.rng.random() < 0.7 else self.days(0.3, 3))
        self.email_event("Email Opened", opened, campaign.campaign_id, email_id, "marketing")
        if self.rng.random() < 0.02:
            self.unsubscribed = True
            self.email_event("Unsubscribed", opened + self.secs(20, 120), campaign.campaign_id, email_id, "marketing")
            return
        if not allow_click or not self.chance(0.28):
            return
        clicked = opened + self.secs(5, 90)
        category = campaign.category or self.intent_category()
        landing = self.rng.choice(self.w.by_category[category])
        link = f"{SHOP_URLS[self.c.country]}/p/{landing.slug}?utm_source=newsletter&utm_medium=email"
        self.email_event(
            "Email Link Clicked",
            clicked,
            campaign.campaign_id,
            email_id,
            "marketing",
            link_url=link,
            product_id=landing.product_id,
        )
        kind = "mobile" if self.rng.random() < 0.6 else "desktop"
        self.shop_online(
            clicked + self.secs(2, 8),
            entry="email",
            email=campaign,
            first=kind,
            products=[landing],
            cross_device=False,
            p_add=0.3,
        )

    def accessories_email(self, order: _Order, t: datetime, *, click: str | None = None) -> None:
        """A personalised e-mail built from the previous purchase: matching accessories."""
        recs = self.offer_accessories(order.product_ids())[:3]
        if not recs or self.unsubscribed:
            return
        email_id = _uuid(self.rng)
        extra = {"order_id": order.order_id, "recommended_products": recs}
        self.email_event("Email Delivered", t, ACCESSORIES_EMAIL, email_id, "automated", **extra)
        if not (click or self.chance(0.5)):
            return
        opened = t + self.hours(0.2, 10)
        self.email_event("Email Opened", opened, ACCESSORIES_EMAIL, email_id, "automated", **extra)
        if not (click or self.chance(0.35)):
            return
        if click:
            pick = self.w.by_id[next((r for r in recs if self.w.by_id[r].category == click), recs[0])]
        else:
            pick = self.w.by_id[self.rng.choice(recs)]
        clicked = opened + self.secs(5, 60)
        link = f"{SHOP_URLS[self.c.country]}/p/{pick.slug}?utm_source=automation&utm_medium=email"
        self.email_event(
            "Email Link Clicked",
            clicked,
            ACCESSORIES_EMAIL,
            email_id,
            "automated",
            link_url=link,
            product_id=pick.product_id,
            order_id=order.order_id,
        )
        if click:  # scripted: looks at it on the desktop, buys it later in the store
            s = self.session("desktop", clicked + self.secs(2, 8))
            s.campaign = {"name": ACCESSORIES_EMAIL, "source": "automation", "medium": "email"}
            self.browse(s, pick.category, 2, first=pick)
            return
        self.shop_online(
            clicked + self.secs(2, 8),
            entry="email",
            first="mobile" if self.rng.random() < 0.5 else "desktop",
            category=pick.category,
            products=[pick],
            cross_device=False,
            p_add=0.4,
        )

    # -- identity edge cases ------------------------------------------------------------

    def guest_checkout_with_junk_email(self, t: datetime) -> None:
        """A guest order from a fresh phone browser with a placeholder e-mail (never merge on it)."""
        dev = self.new_device("mobile")
        s = self.session("mobile", t, device=dev, referrer="https://www.google.com/")
        product = self.rng.choice(self.w.by_category[self.intent_category()])
        self.browse(s, product.category, 1, first=product)
        cart_id = _uuid(self.rng)
        self.add_to_cart(s, cart_id, product)
        self.page(s, "Checkout", "/checkout/guest")
        self.emit(
            "web",
            s.t,
            "identify",
            anonymous_id=dev.anonymous_id,
            traits={"email": JUNK_EMAIL, "firstName": self.c.first_name},
            context=self.context(s),
        )
        self.advance(s, 30, 200)
        self.checkout(s, cart_id, [product], fulfilment="ship")

    def family_tablet(self, t: datetime, tablet_anonymous_id: str) -> None:
        """Two members of a household sign in on the same tablet (same anonymousId, different userIds)."""
        tablet = _Device("tablet", tablet_anonymous_id, self.new_device("tablet").context)
        s = self.session("tablet", t, device=tablet)
        s.user_id = None
        self.page(s, "Home", "/")
        self.advance(s, 5, 30)
        self.login(s)
        self.logged_in.discard("tablet")  # signs out when done; the tablet is shared
        category = self.intent_category()
        viewed = self.browse(s, category, self.rng.randint(1, 3))
        if self.chance(0.4):
            self.add_to_cart(s, _uuid(self.rng), viewed[0])

    # -- the whole life ------------------------------------------------------------------

    def live(self, customers: int) -> None:
        c = self.c
        if c.index == 0:
            self.golden_path()
        elif c.index == 1:
            self.lost_context_story()
        elif c.index == 2:
            self.return_anywhere_story()
        else:
            self.random_life()
        pair = _tablet_pair(c.index, customers)
        if pair is not None:
            prng = random.Random(f"omnijourney-demo:{self.w.seed}:tablet:{pair[0]}")
            tablet_id = _uuid(prng)
            day = self.w.start + timedelta(days=prng.uniform(10, 80))
            t = self.at_hour(day + timedelta(days=0 if c.index == pair[0] else prng.uniform(1, 5)), 17, 21)
            self.family_tablet(t, tablet_id)
        if c.index % 37 == 11:
            self.guest_checkout_with_junk_email(self.at_hour(self.day_offset(self.rng.uniform(5, 80)), 8, 21))
        if c.index % 41 == 7:
            self.store_visit(self.at_hour(self.day_offset(self.rng.uniform(3, 60)), 9, 17), junk_phone=True)

    def random_life(self) -> None:
        c, rng = self.c, self.rng
        plan: list[tuple[datetime, str, Any]] = []

        def when(lo: int = 7, hi: int = 22) -> datetime:
            return self.at_hour(self.w.start + timedelta(days=rng.uniform(0, HISTORY_DAYS - 1)), lo, hi)

        persona = c.persona
        if persona == "omnichannel":
            plan += [(when(), "online", None) for _ in range(rng.randint(1, 4))]
            plan += [(when(8, 18), "store", None) for _ in range(rng.randint(0, 3))]
            if rng.random() < 0.25:
                plan += [(when(), "app", None) for _ in range(rng.randint(1, 2))]
        elif persona == "app_first":
            plan += [(when(), "app", None) for _ in range(rng.randint(2, 6))]
            plan += [(when(8, 18), "store", None) for _ in range(rng.randint(0, 2))]
            if rng.random() < 0.3:
                plan.append((when(), "online", None))
        elif persona == "web_only":
            plan += [(when(), "web_only", None) for _ in range(rng.randint(1, 3))]
        elif persona == "store_only":
            visits = rng.randint(1, 4)
            plan += [(when(8, 18), "store", None) for _ in range(visits)]
            if rng.random() < 0.15:
                plan.append((when(), "signup", None))
        else:  # window shopper
            plan += [(when(), "window", None) for _ in range(rng.randint(1, 2))]
        plan += self.restock_plan()
        if c.email_opt_in:
            for campaign in EMAIL_CAMPAIGNS:
                if rng.random() < 0.97:
                    sent = self.at_hour(self.day_offset(campaign.days_before), 6, 8)
                    plan.append((sent, "email", campaign))
        plan.sort(key=lambda item: item[0])
        for t, kind, arg in plan:
            if kind == "online":
                roll = rng.random()
                entry = "ad" if roll < 0.4 else "organic" if roll < 0.65 else "direct"
                first = "mobile" if entry == "ad" or rng.random() < 0.5 else "desktop"
                self.shop_online(t, entry=entry, first=first)
            elif kind == "web_only":
                entry = "organic" if rng.random() < 0.5 else "direct"
                self.shop_online(t, entry=entry, first="desktop" if rng.random() < 0.6 else "mobile")
            elif kind == "app":
                self.app_session(t)
            elif kind == "store":
                self.store_visit(t)
            elif kind == "signup":
                self.sign_up_online(t)
            elif kind == "window":
                entry = "ad" if rng.random() < 0.7 else "organic"
                self.shop_online(t, entry=entry, first="mobile", p_add=0.25)
            elif kind == "email":
                self.campaign_email(arg, t)
            elif kind == "restock":
                self.restock(t, arg)

    # -- restocking consumables (engage's "buy again") -----------------------------------------

    def restock_plan(self) -> list[tuple[datetime, str, Any]]:
        """About one in five online customers restocks one or two sports-nutrition products every
        three to six weeks. Drawn from the customer's own side stream, so the rest of their life (and
        everyone else's) is what it was before restocking existed."""
        habit = self.restock_rng
        if self.c.persona not in ("omnichannel", "app_first", "web_only") or habit.random() >= 0.2:
            return []
        pool = self.w.by_category["Sports Nutrition"]
        favourites = habit.sample(pool, 1 if habit.random() < 0.6 else 2)
        every = habit.uniform(20, 40)
        day, plan = habit.uniform(0, every), []
        while day < HISTORY_DAYS - 1:
            basket = [p for p in favourites if habit.random() < 0.85] or favourites[:1]
            t = self.w.start + timedelta(days=day, hours=habit.uniform(7, 22))
            plan.append((t, "restock", basket))
            day += every * habit.uniform(0.8, 1.2)
        return plan

    def restock(self, t: datetime, basket: list[Product]) -> _Order | None:
        """Signed in, straight to the products, ordered for delivery (no browsing, no follow-ups)."""
        main, self.rng = self.rng, self.restock_rng
        try:
            s = self.session("app" if self.app_installed else "desktop", t)
            if s.source == "web":
                self.page(s, "Home", "/")
                self.advance(s, 5, 20)
            if s.user_id is None:
                self.login(s)
            cart_id = _uuid(self.rng)
            for p in basket:
                self.browse(s, p.category, 1, first=p)
                self.add_to_cart(s, cart_id, p)
            self.track(s, "Cart Viewed", {"cart_id": cart_id, "products": [self.line(p) for p in basket]})
            return self.checkout(s, cart_id, basket, fulfilment="ship")
        finally:
            self.rng = main

    # -- the scripted showcase stories ----------------------------------------------------

    def golden_path(self) -> None:
        """The brief's story, step by step, for customer 0 (Jana Nováková, Praha).

        An Instagram ad, running shoes put in a cart on her phone, the same cart on the
        desktop after login, click & collect at store-praha-1 where staff offer matching
        accessories and she takes insoles, a chat with support about the shoes, a
        personalised e-mail with accessories she clicks, three days before the anchor a
        store visit where she buys a watch and the bottle from the e-mail, and yesterday a chat
        about pairing the watch (today's click & collect order is placed by `demo.console`).
        """
        by_code = {p.sku.removeprefix("HZ-"): p for p in self.w.catalog}
        ad = next(a for a in AD_CAMPAIGNS if a.campaign_id == "ig-run-season")
        with self.forcing():
            self.shop_online(
                self.at_hour(self.day_offset(30), 9, 10),
                entry="ad",
                campaign=ad,
                first="mobile",
                products=[by_code["RS-PEG41"]],
                accessory=by_code["SK-RU4"],
                cross_device=True,
                fulfilment="click_and_collect",
                store_id="store-praha-1",
                plan=_FollowUps(
                    chat_topic="product_question", chat_satisfied=True, pickup_buy="Insoles", email_click="Bottles"
                ),
            )
        for campaign in EMAIL_CAMPAIGNS:
            if campaign.days_before < 30:
                self.campaign_email(
                    campaign, self.at_hour(self.day_offset(campaign.days_before), 6, 8), allow_click=False
                )
        with self.forcing():
            watch = self.store_visit(
                self.at_hour(self.day_offset(3), 14, 16),
                store_id="store-praha-1",
                products=[by_code["SW-FR265"], by_code["BT-SFLK"]],
            )
        assert watch is not None
        # yesterday evening: a chat about setting up the watch (the transcript an agent reads today)
        self.support_chat(
            watch, self.at_hour(self.day_offset(1), 16, 18), topic="product_setup", satisfied=True, call=False
        )

    def lost_context_story(self) -> None:
        """Customer 1: an online order, a chat that does not settle it, a call the next day."""
        with self.forcing():
            t = self.at_hour(self.day_offset(14), 19, 21)
            s = self.session("desktop", t)
            self.page(s, "Home", "/")
            self.login(s)
            self.shop_online(
                s.t,
                entry="direct",
                first="desktop",
                products=[self.w.by_category["Jackets"][0]],
                fulfilment="ship",
                cross_device=False,
                plan=_FollowUps(chat_topic="where_is_my_order", chat_satisfied=False, call_after_chat=True),
            )
        self.random_life()

    def return_anywhere_story(self) -> None:
        """Customer 2: ordered online for delivery, requested a return, brought it to a store."""
        with self.forcing():
            t = self.at_hour(self.day_offset(25), 19, 21)
            s = self.session("desktop", t)
            self.page(s, "Home", "/")
            self.login(s)
            self.shop_online(
                s.t,
                entry="organic",
                first="desktop",
                products=[self.w.by_category["Running Shoes"][4]],
                fulfilment="ship",
                cross_device=False,
                plan=_FollowUps(return_to="store-brno-1"),
            )
        self.random_life()
