"""The other shops' wording for the demo's teacher domain: headphones, laptops and e-bikes.

The teachers learn extractive QA from these shops' labelled questions and never from the camera
store's (the situation qadist is for: a teacher trained on general or other data, transferred to the
store). Some attributes are shared in kind with the camera store (weight, price, battery, release
year), phrased differently; the rest (drivers, codecs, CPUs, motors, ...) the store never asks about,
and the store's own (sensor, ISO, mount, ...) these shops never state.
"""

from __future__ import annotations

import random

from qadist.demo.catalogue import Catalogue, thousands

# ---- headphones -------------------------------------------------------------------------------------


def headphone_values(rng: random.Random, brand: str) -> dict[str, str]:
    hours = rng.randrange(18, 80)
    return {
        "driver": rng.choice(
            (
                f"{rng.choice((30, 32, 40, 45, 50))} mm dynamic drivers",
                "planar magnetic drivers",
                f"{rng.choice((10, 11, 12))} mm graphene drivers",
                "balanced armature drivers",
            )
        ),
        "anc": rng.choice(
            (
                "hybrid active noise cancelling",
                "adaptive noise cancelling",
                "no active noise cancelling",
                "passive isolation only",
                "feed-forward noise cancelling",
            )
        ),
        "codec": rng.choice(("LDAC and AAC", "aptX Adaptive", "AAC and SBC", "LC3 over Bluetooth LE Audio", "aptX HD")),
        "battery": rng.choice((f"{hours} hours", f"up to {hours} hours", f"{hours} hours with noise cancelling off")),
        "charging": rng.choice(
            (
                f"{rng.randrange(5, 16)} minutes of charging for {rng.randrange(2, 6)} hours of play",
                f"a full charge in {rng.choice(('1.5', '2', '2.5', '3'))} hours",
            )
        ),
        "weight": rng.choice(
            (f"{rng.randrange(180, 390)} g", f"{rng.randrange(4, 9)}.{rng.randrange(10)} g per earbud")
        ),
        "price": rng.choice(
            (
                f"${rng.randrange(49, 549, 10)}",
                f"{rng.randrange(49, 549, 10)} dollars",
                f"${rng.randrange(49, 549, 10) - 0.01:.2f}",
            )
        ),
        "year": str(rng.randrange(2015, 2026)),
    }


HEADPHONES = Catalogue(
    name="headphones",
    kinds=("over-ear", "in-ear", "wireless", "studio", "sports", "noise-cancelling"),
    intros=(
        "{title} - {kind} headphones.",
        "Product overview: the {title} {kind} headphones.",
        "Listen longer with the {title}, our {kind} pick.",
    ),
    brands=("Sonique", "Auralis", "Bassline", "Echo Row", "Quietude", "Tunewell", "Merit Audio", "Fenwick"),
    prefixes=("HX", "Q", "BT", "WH", "Studio", "Air", "NC", "Pulse"),
    suffixes=("", "", " Pro", " 2", " Lite", " Max", "+"),
    values=headphone_values,
    statements={
        "driver": ("Sound comes from {v}.", "Inside are {v}.", "Drivers: {v}.", "The {ref} is tuned around {v}."),
        "anc": ("Noise control: {v}.", "The {ref} offers {v}.", "You get {v} on the commute.", "It features {v}."),
        "codec": (
            "Supported codecs are {v}.",
            "Bluetooth codecs: {v}.",
            "It streams with {v}.",
            "Wireless audio uses {v}.",
        ),
        "battery": (
            "Playback time is {v}.",
            "Battery: {v}.",
            "You can listen for {v} between charges.",
            "The {ref} runs for {v}.",
        ),
        "charging": ("Fast charging gives {v}.", "Charging: {v}.", "A quick top-up means {v}.", "It offers {v}."),
        "weight": ("They weigh {v}.", "Weight is {v}.", "At {v} they sit lightly.", "Mass: {v}."),
        "price": ("Our price: {v}.", "Yours for {v}.", "Retail price {v}.", "The {ref} costs {v} today."),
        "year": ("First sold in {v}.", "Model year {v}.", "The {ref} arrived in {v}.", "Introduced in {v}."),
    },
    questions={
        "driver": (
            "What drivers does the {name} use?",
            "{name} driver size",
            "What is inside the {name}, which drivers?",
            "How big are the drivers on the {name}?",
        ),
        "anc": (
            "Does the {name} have noise cancelling?",
            "{name} anc",
            "How good is noise cancellation on the {name}?",
            "Is the {name} noise cancelling?",
        ),
        "codec": (
            "Which codecs does the {name} support?",
            "Does the {name} do LDAC?",
            "{name} bluetooth codec",
            "What codec does the {name} stream with?",
        ),
        "battery": (
            "How long does the {name} play on a charge?",
            "{name} battery hours",
            "What is the playback time of the {name}?",
            "How many hours of music on the {name}?",
        ),
        "charging": (
            "How fast does the {name} charge?",
            "{name} quick charge",
            "How long to charge the {name}?",
            "Does the {name} have fast charging?",
        ),
        "weight": (
            "How much do the {name} weigh?",
            "{name} weight grams",
            "Are the {name} heavy?",
            "What is the mass of the {name}?",
        ),
        "price": ("What does the {name} cost?", "{name} price", "How much are the {name}?", "Price of the {name}?"),
        "year": (
            "What year are the {name} from?",
            "When did the {name} come out?",
            "{name} model year",
            "When were the {name} introduced?",
        ),
    },
    distractors=(
        "Frequency response spans {n2} Hz to {n2} kHz.",
        "Impedance is {n2} ohms with {n3} dB sensitivity.",
        "The cable is {d1}.{d2} m long.",
        "Pair up to {d1} devices at once.",
        "The case holds {d1} extra charges.",
        "Rated IPX{d1} against sweat.",
    ),
    fillers=(
        "Comfortable for long flights.",
        "Ships with a carry pouch.",
        "A favourite with commuters.",
        "Reviewers like the app's equaliser.",
    ),
)

# ---- laptops ----------------------------------------------------------------------------------------


def laptop_values(rng: random.Random, brand: str) -> dict[str, str]:
    return {
        "cpu": rng.choice(
            (
                f"{brand} Core {rng.choice((5, 7, 9))} {rng.randrange(100, 299)}U",
                f"an {rng.choice(('8', '10', '12', '16'))}-core ARM chip",
                f"Ryzen {rng.choice((5, 7, 9))} {rng.randrange(7000, 9999, 5)}HS",
            )
        ),
        "ram": rng.choice(
            (
                f"{rng.choice((8, 16, 24, 32, 64))} GB of RAM",
                f"{rng.choice((8, 16, 32, 64))} GB LPDDR5",
                f"{rng.choice((16, 32))} GB memory",
            )
        ),
        "storage": rng.choice(
            (
                f"a {rng.choice((256, 512))} GB SSD",
                f"{rng.choice((1, 2, 4))} TB of NVMe storage",
                f"a {rng.choice((512, 1))} {'GB' if rng.random() < 0.5 else 'TB'} drive",
            )
        ),
        "display": rng.choice(
            (
                f"{rng.choice(('13.3', '14', '15.6', '16', '17.3'))}-inch OLED",
                f"{rng.choice(('13.3', '14', '15.6', '16'))}-inch {rng.choice(('1080p', '2.8K', '4K'))} IPS panel",
                f"{rng.choice(('14', '16'))} inch 120 Hz screen",
            )
        ),
        "battery": rng.choice(
            (f"{rng.randrange(6, 24)} hours", f"up to {rng.randrange(6, 24)} hours", f"{rng.randrange(40, 100)} Wh")
        ),
        "weight": rng.choice(
            (
                f"{rng.randrange(9, 28) / 10:.1f} kg",
                f"{rng.randrange(2, 6)}.{rng.randrange(10)} lb",
                f"{rng.randrange(980, 2700, 10)} grams",
            )
        ),
        "price": rng.choice(
            (
                f"${thousands(rng.randrange(499, 3999, 50))}",
                f"US${thousands(rng.randrange(499, 3999, 50))}",
                f"{thousands(rng.randrange(499, 3999, 50))} dollars",
            )
        ),
        "year": str(rng.randrange(2016, 2026)),
    }


LAPTOPS = Catalogue(
    name="laptop",
    kinds=("ultrabook", "gaming", "2-in-1", "business", "student", "workstation"),
    intros=(
        "{title} {kind} laptop.",
        "Laptop of the month: the {title} ({kind}).",
        "Spec sheet for the {title} {kind} laptop.",
    ),
    brands=("Pearson", "Zenbyte", "Calder", "Northfield", "Omnix", "Stratus", "Veritek", "Larkin"),
    prefixes=("Book", "Pro", "Flex", "G", "Air", "Edge", "V", "Slate"),
    suffixes=("", "", " Plus", " Ultra", " 2-in-1", " Gen 2", "X"),
    values=laptop_values,
    statements={
        "cpu": ("Processor: {v}.", "It runs on {v}.", "Under the hood sits {v}.", "The {ref} is powered by {v}."),
        "ram": ("Memory: {v}.", "It ships with {v}.", "The {ref} comes with {v}.", "Multitasking is handled by {v}."),
        "storage": ("Storage: {v}.", "Files live on {v}.", "It includes {v}.", "The {ref} stores your work on {v}."),
        "display": ("Display: {v}.", "The screen is a {v}.", "You look at a {v}.", "The {ref} has a {v}."),
        "battery": (
            "Battery life: {v}.",
            "Unplugged, it lasts {v}.",
            "The battery is rated at {v}.",
            "Expect {v} away from the wall.",
        ),
        "weight": ("Weight: {v}.", "It weighs {v}.", "At {v} it slips into a bag.", "The {ref} comes in at {v}."),
        "price": ("Price: {v}.", "Starting at {v}.", "The {ref} lists at {v}.", "On sale for {v}."),
        "year": ("Released {v}.", "This is the {v} model.", "The {ref} launched in {v}.", "Model year: {v}."),
    },
    questions={
        "cpu": (
            "What processor is in the {name}?",
            "{name} cpu",
            "Which chip does the {name} use?",
            "What CPU powers the {name}?",
        ),
        "ram": (
            "How much RAM does the {name} have?",
            "{name} memory",
            "How much memory is in the {name}?",
            "Can the {name} multitask, how much ram?",
        ),
        "storage": (
            "How much storage does the {name} have?",
            "{name} ssd size",
            "What drive is in the {name}?",
            "How big is the disk in the {name}?",
        ),
        "display": (
            "What screen does the {name} have?",
            "{name} display",
            "How big is the {name}'s screen?",
            "Is the {name} OLED?",
        ),
        "battery": (
            "How long does the {name}'s battery last?",
            "{name} battery life",
            "How many hours unplugged on the {name}?",
            "What is the battery rating of the {name}?",
        ),
        "weight": (
            "How heavy is the {name}?",
            "{name} weight",
            "What does the {name} weigh?",
            "Is the {name} light enough to carry?",
        ),
        "price": (
            "How much is the {name}?",
            "{name} cost",
            "What is the price of the {name}?",
            "What does the {name} sell for?",
        ),
        "year": (
            "What year is the {name}?",
            "{name} release year",
            "When was the {name} launched?",
            "Is the {name} a new model, what year?",
        ),
    },
    distractors=(
        "It has {d1} USB-C ports and {d2} USB-A ports.",
        "The webcam records at {n3}p.",
        "Wi-Fi {d1} and Bluetooth {d2}.{d3} are built in.",
        "The keyboard has {d1} levels of backlight.",
        "It is {d1}{d2}.{d3} mm thin.",
        "The charger is rated at {n2} W.",
    ),
    fillers=(
        "Ideal for students and travellers.",
        "Includes a one-year warranty.",
        "The keyboard is quiet and comfortable.",
        "Free returns within 30 days.",
    ),
)

# ---- e-bikes ----------------------------------------------------------------------------------------


def ebike_values(rng: random.Random, brand: str) -> dict[str, str]:
    return {
        "motor": rng.choice(
            (
                f"a {rng.choice((250, 350, 500, 750))} W hub motor",
                f"a mid-drive motor with {rng.randrange(50, 95)} Nm of torque",
                f"{rng.choice((250, 500))} W rear-hub drive",
            )
        ),
        "range": rng.choice(
            (
                f"{rng.randrange(30, 150)} km",
                f"up to {rng.randrange(20, 90)} miles",
                f"{rng.randrange(30, 150)} kilometres",
            )
        ),
        "battery": rng.choice(
            (
                f"{rng.choice((400, 500, 625, 720, 750))} Wh",
                f"a {rng.choice((36, 48, 52))} V {rng.randrange(10, 20)} Ah pack",
                f"{rng.choice((400, 500, 625))} Wh removable battery",
            )
        ),
        "gears": rng.choice(
            (
                f"{rng.choice((7, 8, 9, 10, 11, 12))}-speed derailleur",
                "a single speed",
                f"{rng.choice((5, 7, 8))}-speed internal hub",
                "a continuously variable hub",
            )
        ),
        "frame": rng.choice(
            ("aluminium", "6061 aluminium", "carbon fibre", "chromoly steel", "step-through aluminium")
        ),
        "weight": rng.choice(
            (
                f"{rng.randrange(14, 34)} kg",
                f"{rng.randrange(14, 34)}.{rng.randrange(10)} kg",
                f"{rng.randrange(35, 75)} lbs",
            )
        ),
        "price": rng.choice(
            (
                f"${thousands(rng.randrange(899, 6999, 100))}",
                f"{thousands(rng.randrange(899, 6999, 100))} USD",
                f"${thousands(rng.randrange(899, 6999, 100))}.00",
            )
        ),
        "year": str(rng.randrange(2017, 2026)),
    }


EBIKES = Catalogue(
    name="e-bike",
    kinds=("commuter", "folding", "cargo", "mountain", "city", "gravel"),
    intros=(
        "The {title} {kind} e-bike.",
        "Ride further on the {title}, a {kind} e-bike.",
        "{title}: {kind} e-bike, in stock now.",
    ),
    brands=("Velora", "Ridgeway", "Cadence", "Moxie", "Trailhand", "Urbane", "Spokewise", "Alder"),
    prefixes=("E", "Volt", "Trek", "C", "Fold", "Haul", "RX", "City"),
    suffixes=("", "", " 2", " ST", " Plus", " Sport", " LT"),
    values=ebike_values,
    statements={
        "motor": (
            "Motor: {v}.",
            "Assistance comes from {v}.",
            "It is driven by {v}.",
            "The {ref} pairs pedalling with {v}.",
        ),
        "range": (
            "Range: {v}.",
            "One charge covers {v}.",
            "Riders get {v} of assisted range.",
            "The {ref} goes {v} per charge.",
        ),
        "battery": ("Battery: {v}.", "Power is stored in {v}.", "It carries {v}.", "The {ref} uses {v}."),
        "gears": ("Gearing: {v}.", "It shifts through a {v}.", "Drivetrain: {v}.", "The {ref} climbs with a {v}."),
        "frame": (
            "Frame material: {v}.",
            "The frame is {v}.",
            "Built on a frame of {v}.",
            "The {ref} has a {v} frame.",
        ),
        "weight": ("Weight: {v}.", "The bike weighs {v}.", "It comes in at {v} with battery.", "The {ref} weighs {v}."),
        "price": ("Price: {v}.", "It retails at {v}.", "Get the {ref} for {v}.", "Now {v} with free assembly."),
        "year": ("Model year: {v}.", "This is the {v} edition.", "The {ref} debuted in {v}.", "Available since {v}."),
    },
    questions={
        "motor": (
            "What motor does the {name} have?",
            "{name} motor watts",
            "How powerful is the {name}'s motor?",
            "Is the {name} mid-drive or hub?",
        ),
        "range": (
            "How far can the {name} go on a charge?",
            "{name} range",
            "What is the range of the {name}?",
            "How many km does the {name} do?",
        ),
        "battery": (
            "What battery does the {name} have?",
            "{name} battery capacity",
            "How big is the {name}'s battery?",
            "How many Wh is the {name}?",
        ),
        "gears": (
            "How many gears does the {name} have?",
            "{name} gears",
            "What drivetrain is on the {name}?",
            "Does the {name} have gears?",
        ),
        "frame": (
            "What is the {name}'s frame made of?",
            "{name} frame material",
            "Is the {name} carbon or aluminium?",
            "What frame does the {name} use?",
        ),
        "weight": (
            "How much does the {name} weigh?",
            "{name} weight",
            "Is the {name} heavy?",
            "What is the weight of the {name}?",
        ),
        "price": (
            "How much does the {name} cost?",
            "{name} price",
            "What is the {name} selling for?",
            "Price of the {name}?",
        ),
        "year": (
            "What model year is the {name}?",
            "{name} year",
            "When did the {name} come out?",
            "How new is the {name}?",
        ),
    },
    distractors=(
        "Tyres are {d1}{d2} x {d1}.{d2} inches.",
        "It supports riders up to {n3} kg.",
        "Assist stops at {d1}{d2} km/h.",
        "Hydraulic disc brakes use {n3} mm rotors.",
        "The display shows {d1} assist levels.",
        "Charging takes {d1} to {d2} hours.",
    ),
    fillers=(
        "Great for hilly commutes.",
        "Fenders and a rack are included.",
        "Test rides are available in store.",
        "Assembly takes about ten minutes.",
    ),
)

OTHER_SHOPS = (HEADPHONES, LAPTOPS, EBIKES)
