"""True statements about a scene: captions, region phrases, VQA questions, NLVR2 sentences
and VCR question/answer/rationale items.

Everything here is computed from the scene dict (see scenes.py) and is true of it by
construction: a phrase "a small red circle" names an object with exactly those attributes,
"two red shapes" means exactly two red objects, "X to the left of Y" means the whole box of
X lies left of the whole box of Y (see scenes.relations).
"""

import itertools
from dataclasses import dataclass

from .scenes import COLORS, CONVERSE, RELATIONS, SHAPES, SIZES, relations

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


def matches(obj, attrs, ref):
    return all(obj[a] == ref[a] for a in attrs)


def unique_attrs(objects, i, orders=REF_ORDERS):
    """Shortest attribute set naming objects[i] alone, or None."""
    for attrs in orders:
        if sum(matches(o, attrs, objects[i]) for o in objects) == 1:
            return attrs
    return None


def count(objects, **ref):
    return sum(all(o[k] == v for k, v in ref.items()) for o in objects)


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
    out, done = [], False
    for p in parts:
        if not done:
            if isinstance(p, Phrase):
                p = Phrase(p.text[:1].upper() + p.text[1:], p.key, p.types)
            else:
                p = p[:1].upper() + p[1:]
            done = True
        out.append(p)
    return out


def plain(parts):
    """Raw caption text: 'A red circle is above a blue square.'"""
    text = ""
    for p in _capitalised(parts):
        s = p.text if isinstance(p, Phrase) else p
        text += s if (s in PUNCT or not text) else " " + s
    return text + "."


def tokens(parts):
    """Karpathy-style tokens: lower case, punctuation dropped."""
    words = []
    for p in parts:
        s = p.text if isinstance(p, Phrase) else p
        words.extend(w.lower() for w in s.split() if w not in PUNCT)
    return words


def entities_line(parts, entity_id):
    """Flickr30k Entities line: '[/EN#3/other A red circle] is above [/EN#4/other …] .'
    `entity_id`: function Phrase.key → int."""
    out = []
    for p in _capitalised(parts):
        if isinstance(p, Phrase):
            out.append(f"[/EN#{entity_id(p.key)}/{'/'.join(p.types)} {p.text}]")
        else:
            out.append(p)
    return " ".join(out + ["."])


def phrases(parts):
    return [p for p in parts if isinstance(p, Phrase)]


# ---------------------------------------------------------------- captions
def _listing(objects, order, attrs_of):
    parts = []
    for k, i in enumerate(order):
        if k and k == len(order) - 1:
            parts.append("and")
        elif k:
            parts.append(",")
        parts.append(Phrase(indefinite(noun(objects[i], attrs_of(i))), ("obj", i)))
    return parts


def _groups(objects):
    """(text-noun, indices) for every attribute group of at least two objects."""
    out = []
    colors = sorted({o["color"] for o in objects})  # only colours present can form a group
    for color in colors:
        idx = tuple(i for i, o in enumerate(objects) if o["color"] == color)
        if len(idx) >= 2:
            out.append((f"{color} shapes", idx))
    for shape in SHAPES:
        idx = tuple(i for i, o in enumerate(objects) if o["shape"] == shape)
        if len(idx) >= 2:
            out.append((f"{shape}s", idx))
            for color in colors:
                sub = tuple(i for i in idx if objects[i]["color"] == color)
                if len(sub) >= 2:
                    out.append((f"{color} {shape}s", sub))
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
        families.append([[Phrase(indefinite(noun(objs[0], FULL)), ("obj", 0)), "on", background]])
    else:
        everything = Phrase(f"{NUMBER_WORDS[n]} shapes", ("group", tuple(range(n))))
        families.append([[everything, "on", background],
                         ["there", "are", everything, "on", background]])
    order = list(range(n))
    rng.shuffle(order)
    families.append([_listing(objs, order, attrs_of)])
    rel = []
    for i, j in itertools.permutations(range(n), 2):
        for r in relations(objs[i], objs[j]):
            rel.append([Phrase(indefinite(noun(objs[i], attrs_of(i))), ("obj", i)), "is",
                        REL_WORDS[r], Phrase(indefinite(noun(objs[j], attrs_of(j))), ("obj", j))])
    families.append(rel)
    families.append([[Phrase(f"{NUMBER_WORDS[len(idx)]} {words}", ("group", idx)), "on",
                      background] for words, idx in _groups(objs)])
    families.append([[Phrase("someone", ("notvisual",), ("notvisual",)), "drew",
                      Phrase(indefinite(noun(o, attrs_of(i))), ("obj", i)), "on",
                      Phrase(background.text, ("background",), ("scene", "other"))]
                     for i, o in enumerate(objs)])
    families.append([[Phrase(indefinite(noun(o, FULL)), ("obj", i)), "against", background]
                     for i, o in enumerate(objs)])
    families.append([[background, "with"] + _listing(objs, order[::-1], attrs_of)])
    if n == 1:
        families.append([["there", "is", "only", Phrase(indefinite(noun(objs[0], attrs_of(0))),
                                                        ("obj", 0))]])
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
        box = [min(a["bbox"][0], b["bbox"][0]), min(a["bbox"][1], b["bbox"][1]),
               max(a["bbox"][2], b["bbox"][2]), max(a["bbox"][3], b["bbox"][3])]
        out.append((f"{noun(a, ('color', 'shape'))} {REL_WORDS[r]} {noun(b, ('color', 'shape'))}",
                    box))
    if len(objs) >= 2:
        box = [min(o["bbox"][0] for o in objs), min(o["bbox"][1] for o in objs),
               max(o["bbox"][2] for o in objs), max(o["bbox"][3] for o in objs)]
        out.append((f"{NUMBER_WORDS[len(objs)]} shapes", box))
    out.append((f"a {scene['background']} background", [0, 0, scene["width"], scene["height"]]))
    return out


# ---------------------------------------------------------------- VQA
def _absent_ref(objects, rng, colors=COLORS):
    for _ in range(50):
        ref = {"color": rng.choice(sorted(colors)), "shape": rng.choice(SHAPES)}
        if not count(objects, **ref):
            return ref
    return None


def vqa_candidates(scene, rng, colors=COLORS):
    """{answer_type: [(question, answer, question_type)]}, all answers true of the scene.
    The template set of demo variant 1; `colors`: the palette."""
    objs = scene["objects"]
    yes_no, number, other = [], [], []
    # yes/no: existence, present and absent
    i = rng.randrange(len(objs))
    attrs = rng.choice((("color", "shape"), ("shape",), FULL))
    yes_no.append((f"Is there {indefinite(noun(objs[i], attrs))}?", "yes", "is there a"))
    ref = _absent_ref(objs, rng, colors)
    if ref is not None:
        yes_no.append((f"Is there {indefinite(ref['color'] + ' ' + ref['shape'])}?", "no",
                       "is there a"))
    # yes/no: relation between two uniquely named objects, true or false
    pairs = [(i, j) for i, j in itertools.permutations(range(len(objs)), 2)
             if unique_attrs(objs, i) and unique_attrs(objs, j)]
    if pairs:
        i, j = rng.choice(pairs)
        holds = relations(objs[i], objs[j])
        r = rng.choice(RELATIONS)
        yes_no.append((f"Is the {noun(objs[i], unique_attrs(objs, i))} {REL_WORDS[r]} the "
                       f"{noun(objs[j], unique_attrs(objs, j))}?",
                       "yes" if r in holds else "no", "is the"))
    # number
    number.append(("How many shapes are there?", str(len(objs)), "how many"))
    color = rng.choice(sorted(colors))
    number.append((f"How many {color} shapes are there?", str(count(objs, color=color)),
                   "how many"))
    shape = rng.choice(SHAPES)
    number.append((f"How many {shape}s are there?", str(count(objs, shape=shape)), "how many"))
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


def vqa_candidates_2(scene, rng, colors=COLORS):
    """The template set of demo variant 2: other wordings than vqa_candidates and other
    question kinds (comparing counts, counting by negation, the largest / smallest shape,
    which side one object is of another). {answer_type: [(question, answer, question_type)]},
    all answers true of the scene; question types are prefixes of the question, as in VQA v2.
    "Largest" / "smallest" is asked only when exactly one object is large / small: its box
    is then the largest / smallest of the scene by area (size ranges in scenes.SIZES)."""
    objs = scene["objects"]
    yes_no, number = [], []
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
    vertical = [(i, j) for i, j in itertools.permutations(range(len(objs)), 2)
                if unique_attrs(objs, i) and unique_attrs(objs, j)
                and {"above", "below"} & set(relations(objs[i], objs[j]))]
    if vertical:
        i, j = rng.choice(vertical)
        yes_no.append((f"Is the {noun(objs[i], unique_attrs(objs, i))} higher than the "
                       f"{noun(objs[j], unique_attrs(objs, j))}?",
                       "yes" if "above" in relations(objs[i], objs[j]) else "no", "is the"))
    # number
    number.append(("How many objects are in the image?", str(len(objs)), "how many"))
    color = rng.choice(sorted({o["color"] for o in objs}))
    number.append((f"How many shapes are not {color}?",
                   str(len(objs) - count(objs, color=color)), "how many"))
    size = rng.choice(sorted(SIZES))
    number.append((f"How many {size} shapes are there?", str(count(objs, size=size)),
                   "how many"))
    shape, color = rng.choice(SHAPES), rng.choice(sorted(colors))
    number.append((f"How many {shape}s are {color}?", str(count(objs, shape=shape, color=color)),
                   "how many"))
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
    for i, j in itertools.permutations(range(len(objs)), 2):  # which side of B is A on
        side = [r for r in relations(objs[i], objs[j]) if r in ("left of", "right of")]
        if side and unique_attrs(objs, i) and unique_attrs(objs, j):
            kinds["side"].append((f"Which side of the {noun(objs[j], unique_attrs(objs, j))} "
                                  f"is the {noun(objs[i], unique_attrs(objs, i))} on?",
                                  side[0].split()[0], "which"))
    other = [rng.choice(v) for v in kinds.values() if v]
    other.append(("What is the color of the background?", scene["background"],
                  "what is the color of the"))
    return {"yes/no": yes_no, "number": number, "other": other}


def vqa_questions(scene, rng, candidates=vqa_candidates, colors=COLORS, per_type=2):
    """Up to `per_type` distinct questions of each answer type (about six per image; VQA v2 has
    5.4), drawn from the template set `candidates` (vqa_candidates or vqa_candidates_2) with the
    palette `colors`. → [(question, answer, answer_type, question_type)]"""
    cands = candidates(scene, rng, colors)
    chosen = []
    for answer_type in ("yes/no", "number", "other"):
        pool = list(dict.fromkeys(cands[answer_type]))
        chosen += [(answer_type, c) for c in rng.sample(pool, min(per_type, len(pool)))]
    return [(q, a, t, qt) for t, (q, a, qt) in chosen]


def human_answers(answer, answer_type, rng, n=10, colors=COLORS):
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
    out = [{}]
    for s in scenes:
        for o in s["objects"]:
            for attrs in (("color",), ("shape",), ("color", "shape"), FULL):
                f = {a: o[a] for a in attrs}
                if f not in out:
                    out.append(f)
    return out


def _np_text(f, plural):
    words = [f[a] for a in ("size", "color") if a in f]
    head = f.get("shape", "shape")
    words.append(head + "s" if plural else head)
    return " ".join(words)


QUANTIFIERS = (("a", lambda c: c >= 1), ("no", lambda c: c == 0),
               ("exactly one", lambda c: c == 1), ("exactly two", lambda c: c == 2),
               ("exactly three", lambda c: c == 3), ("at least two", lambda c: c >= 2))


def _quantified(q, f):
    if q == "a":
        return indefinite(_np_text(f, False))
    return f"{q} {_np_text(f, q not in ('exactly one',))}"


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
            scope = rng.choice(("The left image contains", "The right image contains",
                                "Both images contain", "Exactly one image contains",
                                "At least one image contains"))
            ev = {
                "The left image contains": lambda l, r: test(c(l, f)),
                "The right image contains": lambda l, r: test(c(r, f)),
                "Both images contain": lambda l, r: test(c(l, f)) and test(c(r, f)),
                "Exactly one image contains": lambda l, r: test(c(l, f)) != test(c(r, f)),
                "At least one image contains": lambda l, r: test(c(l, f)) or test(c(r, f)),
            }[scope]
            text = f"{scope} {_quantified(q, f)}."
        elif kind < 0.88:
            k = rng.randint(1, 5)
            text = (f"There is exactly one {_np_text(f, False)} in total." if k == 1 else
                    f"There are exactly {NUMBER_WORDS[k]} {_np_text(f, True)} in total.")
            ev = (lambda k_, f_: lambda l, r: c(l, f_) + c(r, f_) == k_)(k, f)
        else:
            side = rng.choice(("left", "right"))
            g = rng.choice(filters)
            r = rng.choice(RELATIONS)
            text = (f"The {side} image shows {indefinite(_np_text(f, False))} "
                    f"{REL_WORDS[r]} {indefinite(_np_text(g, False))}.")

            def ev(l, rr, side=side, f=f, g=g, r=r):
                s = l if side == "left" else rr
                return any(r in relations(a, b)
                           for a in s["objects"] if all(a[k] == v for k, v in f.items())
                           for b in s["objects"] if b is not a
                           and all(b[k] == v for k, v in g.items()))
        out.append((text, [bool(ev(left, right)) for left, right in pairs]))
    return out


def nlvr2_sentences(pairs, rng, k=2):
    """k distinct sentences for a set of pairs, preferring ones whose labels are mixed
    (balanced first). → [(sentence, [label per pair])]"""
    cands = nlvr2_candidates(pairs, rng)
    n = len(pairs)

    def badness(labels):
        return abs(2 * sum(labels) - n)

    cands.sort(key=lambda c: badness(c[1]))  # stable: ties keep random order
    out, seen = [], set()
    for text, labels in cands:
        if text not in seen:
            seen.add(text)
            out.append((text, labels))
        if len(out) == k:
            break
    return out


# ---------------------------------------------------------------- VCR
def _vcr_claim(ref, obj, attrs):
    """[[i], 'is', 'a', 'small', 'red', 'circle', '.'] (or [[i], 'is', 'red', '.'])."""
    if attrs == ("color",):
        return [[ref], "is", obj["color"], "."]
    return [[ref], "is"] + indefinite(noun(obj, attrs)).split() + ["."]


def vcr_items(scene, rng, k=2, colors=COLORS):
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
            answers = [[[i], "is", c, "."] for c in [o["color"]] + wrong]
        elif kind == "shape":
            question = ["What", "shape", "is", [i], "?"]
            wrong = [s for s in SHAPES if s != o["shape"]]
            rng.shuffle(wrong)
            answers = [[[i], "is"] + indefinite(s).split() + ["."] for s in [o["shape"]] + wrong]
        else:
            if not pairs:
                continue
            i, j = rng.choice(pairs)
            (rel,) = relations(objs[i], objs[j])
            question = ["Where", "is", [i], "compared", "to", [j], "?"]
            wrong = [r for r in RELATIONS if r != rel]
            rng.shuffle(wrong)
            answers = [[[i], "is"] + REL_WORDS[r].split() + [[j], "."] for r in [rel] + wrong]
            rationales = [[[j], "is"] + REL_WORDS[CONVERSE[r]].split() + [[i], "."]
                          for r in [rel] + wrong]
        if kind != "relation":
            true = tuple(o[a] for a in FULL)
            others = [t for t in itertools.product(sorted(SIZES), sorted(colors), SHAPES)
                      if t != true]
            wrong_r = rng.sample(others, 3)
            rationales = [_vcr_claim(i, dict(zip(FULL, t)), FULL) for t in [true] + wrong_r]
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
    words = []
    for t in tokens_:
        words.append(" and ".join(str(r + 1) for r in t) if isinstance(t, list) else t)
    text = ""
    for w in words:
        text += w if (w in ("?", ".", ",") or not text) else " " + w
    return text
