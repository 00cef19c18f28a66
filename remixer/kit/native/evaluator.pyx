# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""matching.evaluate in C: the same order and outcome over the same compiled rules, without a Python
frame per index step, rule and matcher. On the Check path the evaluator's frames, lists and dicts cost
several times their hot-loop time (cold caches between calls); this runs the rules' plans instead.

A plan (indexing.LeafPlan / GroupPlan) says what each matcher does. The plain attribute reads (a
CheckInput field, the path, a header) and the exact / prefix / suffix / membership / presence tests
are done here; every other test (regexes through RE2, IP lists, case folding) and attribute (SPIFFE
parts, query parameters, JWT claims, labels) calls the very function the Python predicate calls.
matching.evaluate stays the reference: explanations and the build without a C compiler use it, and
tests/policy/test_evaluator.py holds the two to the same decisions.

policy.core.rules hands this module the card's attribute table once (`configure`): which attributes
are plain CheckInput fields, and how the path is cut from a request; the native layer imports no card.
"""

from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t

cdef dict PLAIN_FIELDS = {}  # attribute -> CheckInput field, from configure()
cdef object path_only = None


def configure(*, plain_fields, path_of):
    """The card's attribute table: call once, before building a Program."""
    global PLAIN_FIELDS, path_only
    PLAIN_FIELDS = dict(plain_fields)
    path_only = path_of


cdef extern from "Python.h":
    Py_ssize_t PyUnicode_FindChar(object s, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end, int direction) except -2
    Py_ssize_t PyUnicode_Tailmatch(object s, object sub, Py_ssize_t start, Py_ssize_t end, int direction) except -1
    object PyUnicode_Substring(object s, Py_ssize_t start, Py_ssize_t end)
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    int PySet_Contains(object s, object key) except -1
    int PyUnicode_Contains(object s, object sub) except -1


cdef enum:  # how a Reader reads its attribute
    R_CALL = 0  # the Python getter
    R_FIELD  # a CheckInput field, empty -> absent
    R_PATH  # request.path: the path without its query
    R_HEADER  # request.headers.<name>

cdef enum:  # what a Leaf tests
    T_CALL = 0  # the Python test
    T_PRESENT
    T_EXACT
    T_PREFIX
    T_SUFFIX
    T_IN
    T_REGEX  # the literals a match needs, then the Python test
    T_NETWORK  # dotted-quad IPv4 read here; any other text through the Python test

cdef dict _TESTS = {
    "present": T_PRESENT, "exact": T_EXACT, "prefix": T_PREFIX, "suffix": T_SUFFIX, "in": T_IN, "regex": T_REGEX,
    "network": T_NETWORK,
}
cdef str _HEADERS = "request.headers."
cdef enum:
    MAX_GROUPS = 64  # index groups merged on the stack; more go through a sorted dict


cdef class Reader:
    cdef int kind
    cdef str name
    cdef object get

    def __cinit__(self, str attribute, object get):
        self.get = get
        self.kind = R_CALL
        self.name = ""
        if attribute == "request.path":
            self.kind = R_PATH
        elif attribute in PLAIN_FIELDS:
            self.kind = R_FIELD
            self.name = PLAIN_FIELDS[attribute]
        elif attribute.startswith(_HEADERS):
            self.kind = R_HEADER
            self.name = attribute[len(_HEADERS):]

    cdef object read(self, object req, object path):
        cdef PyObject* found
        if self.kind == R_PATH:
            return path if path else None
        if self.kind == R_FIELD:
            value = getattr(req, self.name)
            return value if value else None
        if self.kind == R_HEADER:
            headers = req.headers
            if type(headers) is dict:
                found = PyDict_GetItemWithError(headers, self.name)
                return <object>found if found is not NULL else None
            return headers.get(self.name)
        return self.get(req)


cdef class Node:
    cdef bint matches(self, object req, object path) except -1:
        raise NotImplementedError


cdef class Group(Node):
    """all (any_of False) or any (any_of True) of its parts, stopping at the first that settles it."""

    cdef tuple parts
    cdef bint any_of

    cdef bint matches(self, object req, object path) except -1:
        cdef Node part
        for part in self.parts:
            if part.matches(req, path) == self.any_of:
                return self.any_of
        return not self.any_of


cdef class NoneOf(Node):
    cdef Node inner

    cdef bint matches(self, object req, object path) except -1:
        return not self.inner.matches(req, path)


cdef class Leaf(Node):
    cdef Reader reader
    cdef int op
    cdef object operand
    cdef object test
    cdef bint multi

    cdef bint matches(self, object req, object path) except -1:
        value = self.reader.read(req, path)
        if self.op == T_PRESENT:
            return (value is not None) == <bint>self.operand
        if value is None:
            return False
        if self.multi and isinstance(value, tuple):
            for item in value:
                if self.check(item):
                    return True
            return False
        return self.check(value)

    cdef bint check(self, object value) except -1:
        if type(value) is str:
            if self.op == T_EXACT:
                return <str>value == <str>self.operand
            if self.op == T_PREFIX:
                return PyUnicode_Tailmatch(value, self.operand, 0, len(<str>value), -1)
            if self.op == T_SUFFIX:
                return PyUnicode_Tailmatch(value, self.operand, 0, len(<str>value), 1)
            if self.op == T_IN:
                return PySet_Contains(self.operand, value)
            if self.op == T_REGEX:
                for literal in <tuple>self.operand:
                    if not PyUnicode_Contains(value, literal):
                        return False
            elif self.op == T_NETWORK:
                address = _ipv4(value)
                if address >= 0:
                    return _in_networks(<uint64_t>address, <tuple>self.operand)
        return bool(self.test(value))


cdef int64_t _ipv4(str text):
    """The address of canonical dotted-quad text (what ipaddress accepts: four decimal octets up to
    255, no leading zeros), else -1: the caller asks the Python test, which knows every other form."""
    cdef Py_ssize_t size = len(text)
    cdef Py_ssize_t i
    cdef Py_UCS4 ch
    cdef int64_t address = 0
    cdef int octet = 0, digits = 0, dots = 0
    if size < 7 or size > 15:
        return -1
    for i in range(size):
        ch = text[i]
        if ch == 46:  # "."
            if digits == 0 or dots == 3:
                return -1
            address = (address << 8) | octet
            octet = digits = 0
            dots += 1
        elif 48 <= ch <= 57:  # "0".."9"
            if digits == 1 and octet == 0:
                return -1  # a leading zero
            octet = octet * 10 + (<int>ch - 48)
            digits += 1
            if octet > 255:
                return -1
        else:
            return -1
    if dots != 3 or digits == 0:
        return -1
    return (address << 8) | octet


cdef bint _in_networks(uint64_t address, tuple groups) except -1:
    cdef int length
    for version, length, keys in groups:
        if version == 4 and PySet_Contains(keys, address >> (32 - length)):
            return True
    return False


cdef Node _node(object plan):
    cdef Leaf leaf
    cdef Group group
    cdef NoneOf negation
    if hasattr(plan, "parts"):
        parts = tuple([_node(part) for part in plan.parts])
        if plan.kind == "not":
            negation = NoneOf()
            negation.inner = parts[0]
            return negation
        group = Group()
        group.parts = parts
        group.any_of = plan.kind == "any"
        return group
    leaf = Leaf()
    leaf.reader = Reader(plan.attribute, plan.get)
    leaf.op = _TESTS.get(plan.op, T_CALL)
    leaf.operand = plan.operand
    leaf.test = plan.test
    leaf.multi = plan.multi
    return leaf


cdef class Rule:
    cdef readonly object compiled  # the indexing.CompiledRule
    cdef readonly Py_ssize_t ordinal
    cdef bint dry_run
    cdef bint has_limit
    cdef object decision
    cdef str rule_id
    cdef Node node


cdef class Trie:
    cdef dict children  # path segment -> Trie
    cdef tuple tails  # ((tail the next segment starts with, rules), ...)


cdef class ByValue:
    cdef Reader reader
    cdef dict table  # value -> rules


cdef class Stage:
    cdef tuple always
    cdef dict by_exact
    cdef Trie trie  # None: no path prefixes
    cdef tuple by_value
    cdef Py_ssize_t size

    cdef list groups(self, object req, object path):
        """The rule groups a request selects (StageIndex.candidates before its merge)."""
        cdef list found = []
        cdef PyObject* hit
        cdef ByValue index
        if self.always:
            found.append(self.always)
        if self.by_exact:
            hit = PyDict_GetItemWithError(self.by_exact, path)
            if hit is not NULL:
                found.append(<object>hit)
        if self.trie is not None and PyUnicode_Tailmatch(path, "/", 0, len(<str>path), -1):
            _walk(self.trie, path, found)
        for index in self.by_value:
            value = index.reader.read(req, path)
            if value is None:
                continue
            if isinstance(value, str):
                hit = PyDict_GetItemWithError(index.table, value)
                if hit is not NULL:
                    found.append(<object>hit)
            else:
                for item in value:
                    hit = PyDict_GetItemWithError(index.table, item)
                    if hit is not NULL:
                        found.append(<object>hit)
        return found


cdef int _walk(Trie node, str path, list found) except -1:
    """PrefixNode.groups: one dict step per path segment, without splitting the path."""
    cdef Py_ssize_t size = len(path)
    cdef Py_ssize_t start = 1
    cdef Py_ssize_t end
    cdef tuple pair
    while True:
        end = PyUnicode_FindChar(path, u"/", start, size, 1)
        if end < 0:
            end = size
        for pair in node.tails:
            if PyUnicode_Tailmatch(path, pair[0], start, end, -1):
                found.append(pair[1])
        if not node.children:
            return 0
        child = node.children.get(PyUnicode_Substring(path, start, end))
        if child is None or end >= size:
            return 0
        node = <Trie>child
        start = end + 1


cdef object _in_order(list groups):
    """The rules of the groups in evaluation order, each once (groups are each in order)."""
    cdef Py_ssize_t count = len(groups)
    cdef Py_ssize_t at[MAX_GROUPS]
    cdef Py_ssize_t i, best, last = -1
    cdef Py_ssize_t lowest
    cdef Rule rule
    cdef tuple group
    if count == 0:
        return ()
    if count == 1:
        return groups[0]
    if count > MAX_GROUPS:
        unique = {r.ordinal: r for g in groups for r in g}
        return [unique[k] for k in sorted(unique)]
    for i in range(count):
        at[i] = 0
    out = []
    while True:
        best = -1
        lowest = 0
        for i in range(count):
            group = <tuple>groups[i]
            if at[i] < len(group):
                rule = <Rule>group[at[i]]
                if best < 0 or rule.ordinal < lowest:
                    best = i
                    lowest = rule.ordinal
        if best < 0:
            return out
        at[best] += 1
        if lowest != last:  # a rule reached through two values of one index runs once
            out.append((<tuple>groups[best])[at[best] - 1])
            last = lowest


cdef class Program:
    """A snapshot's three stages compiled for `run`."""

    cdef Stage deny
    cdef Stage rate_limit
    cdef Stage allow
    cdef object default

    def __cinit__(self, deny, rate_limit, allow, default):
        cdef dict rules = {}
        self.deny = _stage(deny, rules)
        self.rate_limit = _stage(rate_limit, rules)
        self.allow = _stage(allow, rules)
        self.default = default

    def run(self, req):
        """The Decision when no rule asked for quota and no dry-run rule matched, else
        (decision, the matched rate-limit CompiledRules, the matched dry-run rule ids or None)."""
        cdef Rule rule
        cdef list dry = None
        cdef list limited = None
        full = req.path
        if type(full) is str:
            cut = PyUnicode_FindChar(full, u"?", 0, len(<str>full), 1)
            path = full if cut < 0 else PyUnicode_Substring(full, 0, cut)
        else:
            path = path_only(req)
        if self.deny.size:
            for rule in _in_order(self.deny.groups(req, path)):
                if rule.node.matches(req, path):
                    if rule.dry_run:
                        dry = _add(dry, rule.rule_id)
                    elif rule.decision is not None:
                        return rule.decision if dry is None else (rule.decision, (), dry)
        if self.rate_limit.size:
            for rule in _in_order(self.rate_limit.groups(req, path)):
                if rule.node.matches(req, path):
                    if rule.dry_run:
                        dry = _add(dry, rule.rule_id)
                    elif rule.has_limit:
                        limited = _add(limited, rule.compiled)
        decision = self.default
        if self.allow.size:
            for rule in _in_order(self.allow.groups(req, path)):
                if rule.node.matches(req, path):
                    if rule.dry_run:
                        dry = _add(dry, rule.rule_id)
                    elif rule.decision is not None:
                        decision = rule.decision
                        break
        if dry is None and limited is None:
            return decision
        return (decision, tuple(limited) if limited is not None else (), dry)


cdef list _add(list items, object item):
    if items is None:
        return [item]
    items.append(item)
    return items


cdef Rule _rule(object compiled, dict rules):
    """One Rule per CompiledRule, however many index groups hold it."""
    cdef Rule rule = rules.get(compiled.ordinal)
    if rule is None:
        rule = Rule()
        rule.compiled = compiled
        rule.ordinal = compiled.ordinal
        rule.dry_run = compiled.dry_run
        rule.has_limit = bool(compiled.limit)
        rule.decision = compiled.decision
        rule.rule_id = compiled.rule_id
        rule.node = _node(compiled.plan)
        rules[compiled.ordinal] = rule
    return rule


cdef tuple _group(object group, dict rules):
    return tuple([_rule(compiled, rules) for compiled in group])


cdef Trie _trie(object node, dict rules):
    cdef Trie trie = Trie()
    trie.children = {segment: _trie(child, rules) for segment, child in node.children.items()}
    trie.tails = tuple([(tail, _group(group, rules)) for tail, group in node.tails])
    return trie


cdef Stage _stage(object index, dict rules):
    cdef Stage stage = Stage()
    cdef ByValue by_value
    stage.always = _group(index.always, rules)
    stage.by_exact = {path: _group(group, rules) for path, group in index.by_exact.items()}
    stage.trie = _trie(index.prefixes, rules) if (index.prefixes.children or index.prefixes.tails) else None
    values = []
    for attribute, get, table in index.by_value:
        by_value = ByValue()
        by_value.reader = Reader(attribute, get)
        by_value.table = {value: _group(group, rules) for value, group in table.items()}
        values.append(by_value)
    stage.by_value = tuple(values)
    stage.size = index.size
    return stage
