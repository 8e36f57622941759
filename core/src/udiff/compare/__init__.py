"""``udiff compare``: the backbones installed here, trained as fair arms on the user's data and
judged by one judge (:mod:`.plan` -> the arms' ``udiff train`` lines -> :mod:`.measure` ->
:mod:`.decision` and :mod:`.picture`; :mod:`.runner` ties them together)."""
