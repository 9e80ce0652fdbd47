"""The lab: train and measure the mappings on real data (``softmaxlab compare``,
``reproduce``, ``report``). Needs the ``lab`` extra (Rich, Matplotlib, scikit-learn)."""
