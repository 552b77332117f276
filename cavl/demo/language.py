"""True statements about a scene: captions, region phrases, VQA questions, NLVR2 sentences
and VCR question/answer/rationale items.

Everything here is computed from the scene dict (see scenes.py) and is true of it by
construction: a phrase "a small red circle" names an object with exactly those attributes,
"two red shapes" means exactly two red objects, "X to the left of Y" means the whole box of
X lies left of the whole box of Y (see scenes.relations).
"""

import itertools
from dataclasses import dataclass, replace

from .scenes import CONVERSE, RELATIONS, SHAPES, SIZES, relations

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
REL_WORDS = {"left of": "to the left of", "right of": "to the right of",
             "above": "above", "below": "below"}
# attribute sets tried, shortest first, to name one object unambiguously
REF_ORDERS = (("shape",), ("color",), ("color", "shape"), ("size", "shape"),
              ("size", "color", "shape"))
FULL = ("size", "color", "shape")


# ---------------------------------------------------------------- noun phrases
def noun(obj, attrs, plural=False):
    """'small red circle' for attrs ('size','color','shape'); head 'shape' without 'shape'."""
    words = [obj[a] for a in ("size", "color") if a in attrs]
    head = obj["shape"] if "shape" in attrs else "shape"
    words.append(head + "s" if plural else head)
    return " ".join(words)


def indefinite(words):
    return ("an " if words[0] in "aeiou" else "a ") + words


def fits(obj, ref):
    return all(obj[k] == v for k, v in ref.items())


def count(objects, **ref):
    return sum(fits(o, ref) for o in objects)


def unique_attrs(objects, i, orders=REF_ORDERS):
    """Shortest attribute set naming objects[i] alone, or None."""
    for attrs in orders:
        if count(objects, **{a: objects[i][a] for a in attrs}) == 1:
            return attrs
    return None


def _names(objects):
    """{i: 'red circle'}: the shortest name of each object that one names alone."""
    return {i: noun(o, attrs) for i, o in enumerate(objects) if (attrs := unique_attrs(objects, i))}


# ---------------------------------------------------------------- structured sentences
@dataclass(frozen=True)
class Phrase:
    """A grounded phrase: `key` is ("obj", i), ("group", (i, j, …)), ("background",) or
    ("notvisual",); `types` are its Flickr30k Entities types."""
    text: str
    key: tuple
    types: tuple = ("other",)


PUNCT = (",", ".")


def _capitalised(parts):
    head, *rest = parts
    if isinstance(head, Phrase):
        return [replace(head, text=head.text[:1].upper() + head.text[1:]), *rest]
    return [head[:1].upper() + head[1:], *rest]


def _text(part):
    return part.text if isinstance(part, Phrase) else part


def _joined(words, punct):
    """Words separated by spaces, none before a punctuation mark in `punct`."""
    text = ""
    for w in words:
        text += w if (w in punct or not text) else " " + w
    return text


def plain(parts):
    """Raw caption text: 'A red circle is above a blue square.'"""
    return _joined([_text(p) for p in _capitalised(parts)], PUNCT) + "."


def tokens(parts):
    """Karpathy-style tokens: lower case, punctuation dropped."""
    return [w.lower() for p in parts for w in _text(p).split() if w not in PUNCT]


def entities_line(parts, entity_id):
    """Flickr30k Entities line: '[/EN#3/other A red circle] is above [/EN#4/other …] .'
    `entity_id`: function Phrase.key → int."""
    return " ".join([f"[/EN#{entity_id(p.key)}/{'/'.join(p.types)} {p.text}]"
                     if isinstance(p, Phrase) else p for p in _capitalised(parts)] + ["."])


def phrases(parts):
    return [p for p in parts if isinstance(p, Phrase)]


# ---------------------------------------------------------------- captions
def _a(objects, i, attrs):
    """Object i as an indefinite noun phrase: 'a red circle'."""
    return Phrase(indefinite(noun(objects[i], attrs)), ("obj", i))


def _listing(objects, order, attrs_of):
    parts = []
    for k, i in enumerate(order):
        if k:
            parts.append("and" if k == len(order) - 1 else ",")
        parts.append(_a(objects, i, attrs_of(i)))
    return parts


def _groups(objects):
    """(text-noun, indices) for every attribute group of at least two objects."""
    def where(**ref):
        return tuple(i for i, o in enumerate(objects) if fits(o, ref))

    colors = sorted({o["color"] for o in objects})  # only colours present can form a group
    out = [(f"{color} shapes", idx) for color in colors if len(idx := where(color=color)) >= 2]
    for shape in SHAPES:
        if len(where(shape=shape)) >= 2:
            out.append((f"{shape}s", where(shape=shape)))
            out += [(f"{color} {shape}s", sub) for color in colors
                    if len(sub := where(shape=shape, color=color)) >= 2]
    return out


def caption_candidates(scene, rng):
    """Families of true captions (lists of Sentence parts), one list per template family."""
    objs, bg = scene["objects"], scene["background"]
    n = len(objs)
    background = Phrase(f"a {bg} background", ("background",), ("scene",))
    families = []

    def attrs_of(_i):
        return rng.choice((("color", "shape"), FULL))

    if n == 1:
        families.append([[_a(objs, 0, FULL), "on", background]])
    else:
        everything = Phrase(f"{NUMBER_WORDS[n]} shapes", ("group", tuple(range(n))))
        families.append([[everything, "on", background],
                         ["there", "are", everything, "on", background]])
    order = list(range(n))
    rng.shuffle(order)
    families.append([_listing(objs, order, attrs_of)])
    families.append([[_a(objs, i, attrs_of(i)), "is", REL_WORDS[r], _a(objs, j, attrs_of(j))]
                     for i, j in itertools.permutations(range(n), 2)
                     for r in relations(objs[i], objs[j])])
    families.append([[Phrase(f"{NUMBER_WORDS[len(idx)]} {words}", ("group", idx)), "on",
                      background] for words, idx in _groups(objs)])
    families.append([[Phrase("someone", ("notvisual",), ("notvisual",)), "drew",
                      _a(objs, i, attrs_of(i)), "on",
                      Phrase(background.text, ("background",), ("scene", "other"))]
                     for i, o in enumerate(objs)])
    families.append([[_a(objs, i, FULL), "against", background] for i in range(n)])
    families.append([[background, "with"] + _listing(objs, order[::-1], attrs_of)])
    if n == 1:
        families.append([["there", "is", "only", _a(objs, 0, attrs_of(0))]])
    return [f for f in families if f]


def captions(scene, rng, k=5):
    """k true captions (structured), drawn round-robin over shuffled template families."""
    families = caption_candidates(scene, rng)
    for f in families:
        rng.shuffle(f)
    rng.shuffle(families)
    out, seen = [], set()
    for sentence in itertools.chain.from_iterable(itertools.zip_longest(*families)):
        if sentence is not None and plain(sentence) not in seen:
            seen.add(plain(sentence))
            out.append(sentence)
    while len(out) < k:  # too few distinct ones: repeat (real datasets have duplicates too)
        out.append(out[len(out) % max(1, len(seen))])
    return out[:k]


# ---------------------------------------------------------------- region phrases (VG)
def _union(objects):
    """The smallest box [x1, y1, x2, y2] holding every object's box."""
    boxes = [o["bbox"] for o in objects]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes)]


def region_phrases(scene, rng, max_relations=2):
    """[(phrase, [x1, y1, x2, y2])]: one per object, some relations, the group, the background."""
    objs = scene["objects"]
    out = []
    for o in objs:
        words = noun(o, rng.choice((FULL, ("color", "shape"))))
        out.append((rng.choice((indefinite(words), words)), list(o["bbox"])))
    rels = [(i, j, r) for i, j in itertools.permutations(range(len(objs)), 2)
            for r in relations(objs[i], objs[j])]
    rng.shuffle(rels)
    for i, j, r in rels[:max_relations]:
        a, b = objs[i], objs[j]
        out.append((f"{noun(a, ('color', 'shape'))} {REL_WORDS[r]} {noun(b, ('color', 'shape'))}",
                    _union((a, b))))
    if len(objs) >= 2:
        out.append((f"{NUMBER_WORDS[len(objs)]} shapes", _union(objs)))
    out.append((f"a {scene['background']} background", [0, 0, scene["width"], scene["height"]]))
    return out


# ---------------------------------------------------------------- VQA
def _absent_ref(objects, rng, colors):
    for _ in range(50):
        ref = {"color": rng.choice(sorted(colors)), "shape": rng.choice(SHAPES)}
        if not count(objects, **ref):
            return ref
    return None


def vqa_candidates(scene, rng, colors):
    """{answer_type: [(question, answer, question_type)]}, all answers true of the scene.
    The template set of demo variant 1; `colors`: the palette."""
    objs = scene["objects"]
    yes_no, other = [], []
    # yes/no: existence, present and absent
    i = rng.randrange(len(objs))
    attrs = rng.choice((("color", "shape"), ("shape",), FULL))
    yes_no.append((f"Is there {indefinite(noun(objs[i], attrs))}?", "yes", "is there a"))
    ref = _absent_ref(objs, rng, colors)
    if ref is not None:
        yes_no.append((f"Is there {indefinite(ref['color'] + ' ' + ref['shape'])}?", "no",
                       "is there a"))
    # yes/no: relation between two uniquely named objects, true or false
    the = _names(objs)
    pairs = list(itertools.permutations(the, 2))
    if pairs:
        i, j = rng.choice(pairs)
        r = rng.choice(RELATIONS)
        yes_no.append((f"Is the {the[i]} {REL_WORDS[r]} the {the[j]}?",
                       "yes" if r in relations(objs[i], objs[j]) else "no", "is the"))
    color, shape = rng.choice(sorted(colors)), rng.choice(SHAPES)
    number = [("How many shapes are there?", str(len(objs)), "how many"),
              (f"How many {color} shapes are there?", str(count(objs, color=color)), "how many"),
              (f"How many {shape}s are there?", str(count(objs, shape=shape)), "how many")]
    # other: colour of an object named without colour, shape of an object named by colour
    for i, o in enumerate(objs):
        attrs = unique_attrs(objs, i, orders=(("shape",), ("size", "shape")))
        if attrs:
            other.append((f"What color is the {noun(o, attrs)}?", o["color"], "what color is the"))
        attrs = unique_attrs(objs, i, orders=(("color",), ("size", "color")))
        if attrs:
            words = " ".join(o[a] for a in ("size", "color") if a in attrs)
            other.append((f"What shape is the {words} object?", o["shape"], "what"))
    other.append(("What color is the background?", scene["background"], "what color is the"))
    return {"yes/no": yes_no, "number": number, "other": other}


SIDES = ("left", "right")


def _compared(objects, attr, palette, rng):
    """Two values of `attr` to compare counts of: two present in the scene when there are,
    else the one present and another from `palette`."""
    present = sorted({o[attr] for o in objects})
    if len(present) >= 2:
        return rng.sample(present, 2)
    return [present[0], rng.choice([v for v in palette if v != present[0]])]


def vqa_candidates_2(scene, rng, colors):
    """The template set of demo variant 2: other wordings than vqa_candidates and other
    question kinds (comparing counts, counting by negation, the largest / smallest shape,
    which side one object is of another). {answer_type: [(question, answer, question_type)]},
    all answers true of the scene; question types are prefixes of the question, as in VQA v2.
    "Largest" / "smallest" is asked only when exactly one object is large / small: its box
    is then the largest / smallest of the scene by area (size ranges in scenes.SIZES)."""
    objs = scene["objects"]
    yes_no = []
    # yes/no: "any", present and absent
    o = objs[rng.randrange(len(objs))]
    yes_no.append((f"Are there any {o['color']} {o['shape']}s?", "yes", "are there any"))
    ref = _absent_ref(objs, rng, colors)
    if ref is not None:
        yes_no.append((f"Are there any {ref['color']} {ref['shape']}s?", "no", "are there any"))
    # yes/no: more X than Y (equal counts: no)
    attr = rng.choice(("color", "shape"))
    a, b = _compared(objs, attr, sorted(colors) if attr == "color" else SHAPES, rng)
    words = (lambda v: f"{v} shapes") if attr == "color" else (lambda v: f"{v}s")
    yes_no.append((f"Are there more {words(a)} than {words(b)}?",
                   "yes" if count(objs, **{attr: a}) > count(objs, **{attr: b}) else "no",
                   "are there"))
    # yes/no: higher than, between uniquely named objects one of which is above the other
    the = _names(objs)
    vertical = [(i, j) for i, j in itertools.permutations(the, 2)
                if {"above", "below"} & set(relations(objs[i], objs[j]))]
    if vertical:
        i, j = rng.choice(vertical)
        yes_no.append((f"Is the {the[i]} higher than the {the[j]}?",
                       "yes" if "above" in relations(objs[i], objs[j]) else "no", "is the"))
    present, size = rng.choice(sorted({o["color"] for o in objs})), rng.choice(sorted(SIZES))
    shape, color = rng.choice(SHAPES), rng.choice(sorted(colors))
    number = [("How many objects are in the image?", str(len(objs)), "how many"),
              (f"How many shapes are not {present}?", str(len(objs) - count(objs, color=present)),
               "how many"),
              (f"How many {size} shapes are there?", str(count(objs, size=size)), "how many"),
              (f"How many {shape}s are {color}?", str(count(objs, shape=shape, color=color)),
               "how many")]
    # other: one question of each kind that applies (so kinds with many instances, such as
    # object pairs, do not crowd out the rest)
    kinds = {"extreme": [], "color": [], "shape": [], "side": []}
    if len(objs) >= 2:  # colour of the largest / smallest shape
        for size, word in (("large", "largest"), ("small", "smallest")):
            if count(objs, size=size) == 1:
                (o,) = [o for o in objs if o["size"] == size]
                kinds["extreme"].append((f"What color is the {word} shape?", o["color"],
                                         "what color is the"))
    for i, o in enumerate(objs):  # colour of an object named without colour, and vice versa
        attrs = unique_attrs(objs, i, orders=(("shape",), ("size", "shape")))
        if attrs:
            kinds["color"].append((f"What is the color of the {noun(o, attrs)}?", o["color"],
                                   "what is the color of the"))
        if unique_attrs(objs, i, orders=(("color",),)):
            kinds["shape"].append((f"Which shape is {o['color']}?", o["shape"], "which"))
    for i, j in itertools.permutations(the, 2):  # which side of B is A on
        side = [r for r in relations(objs[i], objs[j]) if r in ("left of", "right of")]
        if side:
            kinds["side"].append((f"Which side of the {the[j]} is the {the[i]} on?",
                                  side[0].split()[0], "which"))
    other = [rng.choice(v) for v in kinds.values() if v]
    other.append(("What is the color of the background?", scene["background"],
                  "what is the color of the"))
    return {"yes/no": yes_no, "number": number, "other": other}


def vqa_questions(scene, rng, candidates, colors, per_type=2):
    """Up to `per_type` distinct questions of each answer type (about six per image; VQA v2 has
    5.4), drawn from the template set `candidates` (vqa_candidates or vqa_candidates_2) with the
    palette `colors`. → [(question, answer, answer_type, question_type)]"""
    cands = candidates(scene, rng, colors)
    chosen = []
    for answer_type in ("yes/no", "number", "other"):
        pool = list(dict.fromkeys(cands[answer_type]))
        chosen += [(answer_type, c) for c in rng.sample(pool, min(per_type, len(pool)))]
    return [(q, a, t, qt) for t, (q, a, qt) in chosen]


def human_answers(answer, answer_type, rng, colors, n=10):
    """n annotator answers: a majority (≥ 6) give `answer` exactly, some a variant of it
    ('2' / 'two', 'red' / 'Red.', 'left' / 'left side'), and sometimes one gives a wrong
    answer (a wrong colour from the palette `colors`).
    → [(answer, answer_confidence)]"""
    if answer_type == "number":
        variants = [NUMBER_WORDS[int(answer)]]
        wrong = str(int(answer) + 1) if rng.random() < 0.5 or answer == "0" else str(int(answer) - 1)
    elif answer_type == "yes/no":
        variants = [answer.capitalize()]
        wrong = "no" if answer == "yes" else "yes"
    elif answer in colors or answer in ("white", "gray", "black"):
        variants = [answer.capitalize() + ".", answer.capitalize()]
        wrong = rng.choice([c for c in sorted(colors) if c != answer])
    elif answer in SIDES:
        variants = [answer.capitalize(), f"{answer} side"]
        wrong = SIDES[1 - SIDES.index(answer)]
    else:
        variants = [indefinite(answer), answer + "."]
        wrong = rng.choice([s for s in SHAPES if s != answer])
    n_exact = rng.randint(6, 9)
    n_wrong = 1 if n_exact < n and rng.random() < 0.35 else 0
    out = [(answer, rng.choice(("yes",) * 4 + ("maybe",))) for _ in range(n_exact)]
    out += [(rng.choice(variants), "yes") for _ in range(n - n_exact - n_wrong)]
    out += [(wrong, rng.choice(("maybe", "no"))) for _ in range(n_wrong)]
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------- NLVR2
def _np_filters(scenes):
    """Noun-phrase filters ({attr: value}) drawn from the objects of a set of scenes."""
    found = ({a: o[a] for a in attrs} for s in scenes for o in s["objects"]
             for attrs in (("color",), ("shape",), ("color", "shape"), FULL))
    return list({tuple(f.items()): f for f in ({}, *found)}.values())  # distinct, first seen first


QUANTIFIERS = (("a", lambda c: c >= 1), ("no", lambda c: c == 0),
               ("exactly one", lambda c: c == 1), ("exactly two", lambda c: c == 2),
               ("exactly three", lambda c: c == 3), ("at least two", lambda c: c >= 2))


# "{scope} {quantified noun phrase}.": scope → truth from the quantifier's truth on (left, right)
SCOPES = {"The left image contains": lambda a, b: a,
          "The right image contains": lambda a, b: b,
          "Both images contain": lambda a, b: a and b,
          "Exactly one image contains": lambda a, b: a != b,
          "At least one image contains": lambda a, b: a or b}


def _quantified(q, f):
    if q == "a":
        return indefinite(noun(f, f))
    return f"{q} {noun(f, f, q != 'exactly one')}"


def nlvr2_candidates(pairs, rng, n=80):
    """Random NLVR2-style sentences with their labels over the given (left, right) scene
    pairs. → [(sentence, [label per pair])]"""
    scenes = [s for p in pairs for s in p]
    filters = _np_filters(scenes)

    def c(scene, f):
        return count(scene["objects"], **f)

    out = []
    for _ in range(n):
        kind = rng.random()
        f = rng.choice(filters)
        if kind < 0.75:
            q, test = rng.choice(QUANTIFIERS)
            scope = rng.choice(tuple(SCOPES))
            text = f"{scope} {_quantified(q, f)}."
            labels = [SCOPES[scope](test(c(left, f)), test(c(right, f))) for left, right in pairs]
        elif kind < 0.88:
            k = rng.randint(1, 5)
            text = (f"There is exactly one {noun(f, f)} in total." if k == 1 else
                    f"There are exactly {NUMBER_WORDS[k]} {noun(f, f, True)} in total.")
            labels = [c(left, f) + c(right, f) == k for left, right in pairs]
        else:
            side = rng.choice(("left", "right"))
            g = rng.choice(filters)
            r = rng.choice(RELATIONS)
            text = (f"The {side} image shows {indefinite(noun(f, f))} "
                    f"{REL_WORDS[r]} {indefinite(noun(g, g))}.")
            shown = [pair[side == "right"]["objects"] for pair in pairs]
            labels = [any(r in relations(a, b) for a in objs if fits(a, f)
                          for b in objs if b is not a and fits(b, g)) for objs in shown]
        out.append((text, [bool(x) for x in labels]))
    return out


def nlvr2_sentences(pairs, rng, k=2):
    """k distinct sentences for a set of pairs, preferring ones whose labels are mixed
    (balanced first). → [(sentence, [label per pair])]"""
    cands = nlvr2_candidates(pairs, rng)
    cands.sort(key=lambda c: abs(2 * sum(c[1]) - len(pairs)))  # stable: ties keep random order
    out, seen = [], set()
    for text, labels in cands:
        if text not in seen:
            seen.add(text)
            out.append((text, labels))
        if len(out) == k:
            break
    return out


# ---------------------------------------------------------------- VCR
def _claim(i, words, *tail):
    """[[i], 'is', 'a', 'red', 'circle', '.']: `words` after object i, then `tail`."""
    return [[i], "is", *words.split(), *tail, "."]


def vcr_items(scene, rng, colors, k=2):
    """Up to k VCR items {question, answer_choices, answer_label, rationale_choices,
    rationale_label}: 4 choices each, exactly one true (token lists, [i] = object i); wrong
    colours from the palette `colors`."""
    objs = scene["objects"]
    items = []
    kinds = ["color", "shape", "relation"]
    rng.shuffle(kinds)
    pairs = [(i, j) for i, j in itertools.permutations(range(len(objs)), 2)
             if len(relations(objs[i], objs[j])) == 1]
    for kind in itertools.islice(itertools.cycle(kinds), 2 * k):
        if len(items) == k:
            break
        i = rng.randrange(len(objs))
        o = objs[i]
        if kind == "color":
            question = ["What", "color", "is", [i], "?"]
            wrong = rng.sample([c for c in sorted(colors) if c != o["color"]], 3)
            answers = [_claim(i, c) for c in [o["color"]] + wrong]
        elif kind == "shape":
            question = ["What", "shape", "is", [i], "?"]
            wrong = [s for s in SHAPES if s != o["shape"]]
            rng.shuffle(wrong)
            answers = [_claim(i, indefinite(s)) for s in [o["shape"]] + wrong]
        else:
            if not pairs:
                continue
            i, j = rng.choice(pairs)
            (rel,) = relations(objs[i], objs[j])
            question = ["Where", "is", [i], "compared", "to", [j], "?"]
            wrong = [r for r in RELATIONS if r != rel]
            rng.shuffle(wrong)
            answers = [_claim(i, REL_WORDS[r], [j]) for r in [rel] + wrong]
            rationales = [_claim(j, REL_WORDS[CONVERSE[r]], [i]) for r in [rel] + wrong]
        if kind != "relation":
            true = tuple(o[a] for a in FULL)
            others = [t for t in itertools.product(sorted(SIZES), sorted(colors), SHAPES)
                      if t != true]
            rationales = [_claim(i, indefinite(" ".join(t))) for t in [true] + rng.sample(others, 3)]
        a_label, r_label = rng.randrange(4), rng.randrange(4)
        answers = _place(answers, a_label)
        rationales = _place(rationales, r_label)
        if any(it["question"] == question for it in items):
            continue
        items.append({"question": question, "answer_choices": answers, "answer_label": a_label,
                      "rationale_choices": rationales, "rationale_label": r_label})
    return items


def _place(choices, label):
    """choices[0] is the right one: move it to position `label`, keep the rest in order."""
    right, rest = choices[0], choices[1:]
    return rest[:label] + [right] + rest[label:]


def vcr_text(tokens_):
    """The *_orig form: references written as 1-based numbers ('What color is 1?')."""
    return _joined([" and ".join(str(r + 1) for r in t) if isinstance(t, list) else t
                    for t in tokens_], ("?", ".", ","))
