"""Series classification: rules over a series' indexed header (DICOM JSON)
and facts derived from its instances; the built-in classes of DESIGN §10
and data-transfer-station's ``classifyRules.json`` format.

Typical use, from headers as the index stores them::

    rules = load_rules(settings.classification_rules)   # "" → built-ins only
    classes = classify_headers(instance_headers, rules)   # one pass

or, holding a representative header and the facts already::

    classes = classify_series(header, series_facts(instance_headers), rules)
"""

from .builtin import BUILTIN_CLASSES
from .engine import class_matches, classify_headers, classify_series
from .facts import FactsBuilder, SeriesFacts, series_facts
from .rules import Rule, RuleError, RuleSet, load_rules, merge_rules, parse_rules

__all__ = ["BUILTIN_CLASSES", "classify_series", "classify_headers", "class_matches", "FactsBuilder",
           "SeriesFacts", "series_facts", "Rule", "RuleError", "RuleSet", "load_rules",
           "merge_rules", "parse_rules"]
