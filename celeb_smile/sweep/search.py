"""TEMPORARY stand-in until the search branch lands: grid/random from SweepSpec.trials()."""


class _Listed:
    name = "grid"

    def __init__(self, combos):
        self.combos = combos

    def planned(self):
        return len(self.combos)

    def get_suggestions(self, trials, n):
        seen = [t.params for t in trials]
        return [c for c in self.combos if c not in seen][:n]


def make_search(spec):
    return _Listed(spec.trials())
