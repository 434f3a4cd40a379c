"""The batch layer's scikit-learn intent classifier, one estimator per module.

`recipe.build_batch_model` is TF-IDF of hashed word and `char_wb` n-grams, counted on several
processes (`features`), feeding a linear SVM whose classes are fitted in groups on threads
(`one_vs_rest`) and a multinomial naive Bayes (`naive_bayes`), each turned into probabilities
by a softmax temperature fitted on held-out scores (`temperature`), then averaged, and fitted
once per distinct (text, intent) pair weighted by the log of its count (`distinct_rows`). Each
step costs the distinct texts once or a bounded number of times, so the fit grows linearly
with them. The probabilities are blended with the speed layer's and scored by log loss, so they
are calibrated, not just ranked.

Any other scikit-learn classifier can be the batch model (`BATCH_MODEL`):
`recipe.prepare_batch_model` checks it, calibrates one that gives margins only, and wraps it in
`DistinctRowsClassifier`. Nothing here imports pyarrow, so a fitted model loads without it.
"""
