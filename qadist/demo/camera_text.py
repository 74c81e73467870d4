"""The camera store's wording for `qadist.demo.domain` (`CAMERA`): attributes, brands and model names,
the sentences a page states an attribute with, the distracting numbers and filler around them, and
the ways a shopper asks about each attribute."""

from __future__ import annotations

import random
import string

from qadist.demo.catalogue import Catalogue, thousands

BRANDS = (
    "Kestrel",
    "Orion",
    "Lumora",
    "Vantor",
    "Halcyon",
    "Pentara",
    "Novik",
    "Sorell",
    "Aurex",
    "Tamsin",
    "Brightwell",
    "Corvid",
)
PREFIXES = ("X", "Z", "R", "GX", "SL", "Q", "TX", "M", "EV", "K", "FZ", "A")
SUFFIXES = ("", "", "", " II", " III", " Mark II", "s", " Pro", "R", " Mini")

# Sentence templates per attribute: `{name}` / `{ref}` name the camera, `{v}` is the answer.
STATEMENTS = {
    "sensor": (
        "At its heart is a {v} sensor.",
        "The {ref} uses a {v} sensor.",
        "It is built around a {v} sensor, a step up for this class.",
        "Sensor format: {v}.",
        "{ref_cap} shoots on a {v} sensor.",
    ),
    "megapixels": (
        "It captures {v} images.",
        "Resolution comes in at {v}.",
        "The sensor resolves {v}, plenty for large prints.",
        "Stills are recorded at {v}.",
        "Files from the {ref} come out at {v}.",
    ),
    "iso": (
        "Sensitivity runs {v}.",
        "The native range is {v}, good for dim interiors.",
        "It covers {v} for low light.",
        "ISO range: {v}.",
        "Low-light work benefits from a range of {v}.",
    ),
    "mount": (
        "Lenses attach via the {v}.",
        "It takes lenses for the {v}.",
        "The {ref} uses the {v}, with dozens of lenses available.",
        "Mount: {v}.",
    ),
    "stabilisation": (
        "It offers {v}.",
        "Shake is tamed by {v}.",
        "Stabilisation: {v}.",
        "The {ref} relies on {v} for handheld shots.",
    ),
    "video": (
        "Video tops out at {v}.",
        "It records video at up to {v}.",
        "Filmmakers get {v} recording.",
        "Best video mode: {v}.",
    ),
    "battery": (
        "The battery is rated for {v} per charge.",
        "Battery life is about {v}.",
        "A full charge lasts roughly {v}.",
        "Expect around {v} from one battery.",
    ),
    "weight": (
        "The body weighs {v} with battery and card.",
        "It tips the scales at {v}.",
        "Weight: {v}.",
        "Carrying just {v}, the {ref} is easy to take along.",
    ),
    "sealing": ("The body is {v}.", "Weather protection: {v}.", "Its magnesium alloy shell is {v}.", "Build: {v}."),
    "price": (
        "The body sells for {v}.",
        "It is priced at {v} body only.",
        "Price: {v}.",
        "You can buy the {ref} for {v}.",
    ),
    "year": (
        "It was released in {v}.",
        "The {ref} was announced in {v}.",
        "Launched in {v}, it replaced an older model.",
        "Release year: {v}.",
    ),
}
DISTRACTORS = (
    "The rear screen is a {d1}.{d2}-inch touchscreen with {d3}.{d4} million dots.",
    "Burst shooting reaches {n2} fps with a buffer of {n3} frames.",
    "The electronic viewfinder has {d1}.{d3}{d4} million dots and {d1}.{d2}x magnification.",
    "The kit lens is a {n2}-{n3}mm f/{d1}.{d2}-{d3}.{d4} zoom.",
    "Charging over USB-C takes about {d1}.{d2} hours.",
    "It measures {n3} x {n2}{d1} x {n2} mm.",
    "Shutter speeds run from 30 s to 1/{n4} s.",
    "It has {d1} card slots and a {d1}.{d2} mm headphone jack.",
    "A {n2}% off coupon applies to accessories bought with it.",
    "The grip adds {n2} g and {n3} extra shots when fitted.",
    "Autofocus uses {n3} phase-detect points.",
)
FILLERS = (
    "Shoppers praise its handling.",
    "It is a popular pick for travel and street photography.",
    "Reviewers call it a dependable all-rounder.",
    "The menus are easy to learn.",
    "Free shipping is available on this item.",
    "It comes with a strap, a charger and a body cap.",
    "Many owners use it for weddings and events.",
    "It is a favourite among wildlife photographers.",
)
QUESTIONS = {
    "sensor": (
        "What sensor does the {name} have?",
        "What size is the sensor in the {name}?",
        "which sensor format is the {name}",
        "Is the {name} full frame or crop?",
        "What kind of sensor is in the {name}?",
    ),
    "megapixels": (
        "How many megapixels is the {name}?",
        "What is the resolution of the {name}?",
        "{name} megapixels",
        "How many MP does the {name} shoot?",
        "What resolution are photos from the {name}?",
    ),
    "iso": (
        "What is the ISO range of the {name}?",
        "How high does the ISO go on the {name}?",
        "{name} iso range",
        "What sensitivity range does the {name} cover?",
        "How good is the {name} in low light, what ISO?",
    ),
    "mount": (
        "What lens mount does the {name} use?",
        "Which lenses fit the {name}?",
        "{name} lens mount",
        "What mount is the {name}?",
        "What lenses can I put on the {name}?",
    ),
    "stabilisation": (
        "Does the {name} have image stabilization?",
        "What stabilisation does the {name} offer?",
        "{name} stabilization",
        "Is there IBIS in the {name}?",
        "How is shake reduced on the {name}?",
    ),
    "video": (
        "What video resolution does the {name} record?",
        "Can the {name} shoot 4K?",
        "{name} video modes",
        "What is the best video mode of the {name}?",
        "How good is video on the {name}?",
    ),
    "battery": (
        "How many shots does the {name} get per charge?",
        "What is the battery life of the {name}?",
        "{name} battery life",
        "How long does the battery last on the {name}?",
        "How many pictures per battery with the {name}?",
    ),
    "weight": (
        "How much does the {name} weigh?",
        "What is the weight of the {name}?",
        "{name} weight",
        "How heavy is the {name}?",
        "Is the {name} light, how many grams?",
    ),
    "sealing": (
        "Is the {name} weather sealed?",
        "Can I use the {name} in the rain?",
        "{name} weather sealing",
        "How weatherproof is the {name}?",
        "Is the {name} dustproof?",
    ),
    "price": (
        "How much does the {name} cost?",
        "What is the price of the {name}?",
        "{name} price",
        "How expensive is the {name}?",
        "What does the {name} sell for?",
    ),
    "year": (
        "When was the {name} released?",
        "What year did the {name} come out?",
        "{name} release date",
        "When did the {name} launch?",
        "How old is the {name}?",
    ),
}


def attribute_values(rng: random.Random, brand: str) -> dict[str, str]:
    """One camera's attribute values, each as the exact phrase its page will contain."""
    mp = rng.choice((12.1, 16.0, 20.1, 20.3, 24.2, 24.5, 26.1, 30.4, 33.0, 40.2, 45.7, 50.1, 61.0, 102.0))
    iso_lo = rng.choice((50, 64, 100, 125, 160, 200))
    iso_hi = rng.choice((12800, 25600, 32000, 51200, 102400, 204800))
    iso_form = rng.randrange(3)
    mount_letter = rng.choice(string.ascii_uppercase)
    stops = rng.choice(("5", "5.5", "6", "6.5", "7", "8"))
    return {
        "sensor": rng.choice(
            (
                "full-frame",
                "APS-C",
                "Micro Four Thirds",
                "1-inch",
                "medium format",
                "stacked full-frame",
                "back-illuminated APS-C",
            )
        ),
        "megapixels": rng.choice((f"{mp} megapixels", f"{mp}MP", f"{mp} MP")),
        "iso": (
            f"ISO {iso_lo}-{thousands(iso_hi)}",
            f"ISO {iso_lo} to {thousands(iso_hi)}",
            f"from ISO {iso_lo} up to ISO {iso_hi}",
        )[iso_form],
        "mount": rng.choice((f"{brand} {mount_letter}-mount", f"{mount_letter} mount", f"{mount_letter}-mount")),
        "stabilisation": rng.choice(
            (
                f"5-axis in-body stabilisation rated at {stops} stops",
                "sensor-shift stabilisation",
                "lens-based optical stabilisation only",
                "digital stabilisation for video only",
                f"in-body image stabilisation worth {stops} stops",
            )
        ),
        "video": rng.choice(
            ("4K at 60p", "4K at 30p", "6K at 30p", "8K at 24p", "Full HD at 120p", "4K at 120p", "5.7K at 30p")
        ),
        "battery": f"{rng.randrange(250, 1900, 10)} shots",
        "weight": rng.choice((f"{rng.randrange(280, 1400, 5)} g", f"{rng.randrange(280, 1400, 5)} grams")),
        "sealing": rng.choice(
            (
                "weather-sealed",
                "dust- and splash-resistant",
                "not weather sealed",
                "fully sealed against dust and moisture",
                "sealed at every button and dial",
            )
        ),
        "price": rng.choice((f"${rng.randrange(399, 6999, 100):,}", f"${rng.randrange(399, 6999, 100) - 0.01:,.2f}")),
        "year": str(rng.randrange(2012, 2026)),
    }


CAMERA = Catalogue(
    name="camera",
    kinds=("mirrorless", "compact", "mirrorless hybrid", "travel", "vlogging", "professional"),
    intros=(
        "The {title} is a {kind} camera.",
        "Meet the {title}, a {kind} camera.",
        "{title}: a {kind} camera for enthusiasts.",
    ),
    brands=BRANDS,
    prefixes=PREFIXES,
    suffixes=SUFFIXES,
    values=attribute_values,
    statements=STATEMENTS,
    questions=QUESTIONS,
    distractors=DISTRACTORS,
    fillers=FILLERS,
)
