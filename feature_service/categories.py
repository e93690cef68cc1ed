"""Derived category tree: the source data has product titles but no categories.

Method (reproducible, documented in the ingest report): each title is upper-cased and split into
words; the first rule below whose keyword set intersects the title's words assigns the
two-level path (top category, subcategory). Rules are ordered from specific to general, so
"CHRISTMAS TREE T-LIGHT HOLDER" lands in seasonal/christmas, not lighting. Titles matching no
rule get `other/other`. Everything built from this module is labelled *derived*.
"""

from __future__ import annotations

import re

# (top category, subcategory, keywords). Order matters: first match wins.
CATEGORY_RULES: tuple[tuple[str, str, frozenset[str]], ...] = tuple(
    (top, sub, frozenset(words.split()))
    for top, sub, words in (
        ("seasonal", "christmas", "CHRISTMAS XMAS ADVENT SANTA REINDEER SNOWFLAKE NATIVITY"),
        ("seasonal", "easter", "EASTER"),
        ("seasonal", "halloween", "HALLOWEEN"),
        ("jewellery", "jewellery", "NECKLACE NECKLAC BRACELET EARRINGS BROOCH CHARM DIAMANTE"),
        ("jewellery", "hair accessories", "HAIR HAIRCLIP HAIRBAND SLIDE"),
        ("party", "party supplies", "PARTY BIRTHDAY BALLOON BALLOONS BUNTING NAPKINS CONFETTI"),
        ("lighting", "candles", "CANDLE CANDLES INCENSE T-LIGHT TEALIGHT TEALIGHTS"),
        ("lighting", "lights and lanterns", "LIGHT LIGHTS LANTERN LAMP LAMPSHADE NIGHTLIGHT"),
        ("kitchen", "baking", "CAKE CAKES BAKING CAKESTAND CUPCAKE MOULD CASES"),
        ("kitchen", "tableware", "MUG MUGS CUP CUPS PLATE PLATES BOWL BOWLS DISH SAUCER TEAPOT"),
        (
            "kitchen",
            "kitchen accessories",
            "KITCHEN CUTLERY SPOON SPOONS APRON JAR JARS TRAY PANTRY",
        ),
        ("kitchen", "food and drink", "TEA COFFEE JAM CHOCOLATE LUNCH PICNIC BOTTLE FLASK"),
        (
            "stationery",
            "cards and wrap",
            "CARD CARDS WRAP ENVELOPE ENVELOPES TAG TAGS RIBBON RIBBONS",
        ),
        (
            "stationery",
            "paper goods",
            "NOTEBOOK PEN PENS PENCIL PENCILS STICKERS STICKER PAPER BOOK",
        ),
        (
            "toys",
            "toys and games",
            "TOY TOYS GAME GAMES JIGSAW DOLLY DOLL PLAYHOUSE SPACEBOY SKIPPING",
        ),
        ("toys", "children", "CHILDRENS CHILDS BABY KIDS"),
        ("bags", "bags", "BAG BAGS PURSE TOTE SHOPPER BACKPACK"),
        ("storage", "boxes and tins", "BOX BOXES TIN TINS STORAGE BASKET HAMPER CRATE CASE"),
        ("garden", "garden", "GARDEN PARASOL UMBRELLA WATERING PLANT PLANTER BIRD HEN"),
        ("bath", "bath", "BATHROOM TOWEL SOAP TISSUES SPONGE"),
        ("home decor", "wall decor", "WALL SIGN MIRROR FRAME PICTURE CLOCK PLAQUE METAL"),
        ("home decor", "soft furnishings", "CUSHION DOORMAT THROW BLANKET CURTAIN QUILT"),
        ("home decor", "hooks and hangers", "HOOK HOOKS HANGER HANGERS KNOB KNOBS RACK"),
        (
            "home decor",
            "decorations",
            "DECORATION DECORATIONS GARLAND WREATH HANGING ORNAMENT VASE",
        ),
        ("home decor", "furniture", "DRAWER CABINET SHELF TABLE CHAIR STOOL"),
    )
)
OTHER: tuple[str, str] = ("other", "other")
_WORD = re.compile(r"[A-Z][A-Z\-]*")


def categorise(title: str) -> tuple[str, str]:
    """Returns the derived (top category, subcategory) of a product title."""
    words = set(_WORD.findall(title.upper()))
    for top, sub, keywords in CATEGORY_RULES:
        if words & keywords:
            return top, sub
    return OTHER


def top_categories() -> tuple[str, ...]:
    """All top-level categories in a fixed order (used to encode categories as integers)."""
    seen: dict[str, None] = {}
    for top, _, _ in CATEGORY_RULES:
        seen.setdefault(top, None)
    seen.setdefault(OTHER[0], None)
    return tuple(seen)
