"""The command lines, one module each (run them with `python -m dnl_jax.cli.NAME`):

    train       train and evaluate a config (`--config`, `--workdir`, `--config.KEY=VALUE`)
    evaluate    a checkpoint with the evaluators of its config
    analyze     the DNL paper's analysis of a checkpoint's non-local blocks
    prepare     a dataset's raw download into array_record files
    convert     a PyTorch checkpoint into dnl_jax variables
    pretrained  a downloaded ImageNet backbone into what the trainer loads
    predict     a checkpoint (or an exported model) on your own images and videos, --explain
    export      a checkpoint as a serialized jax.export artifact with its preprocessing record

flags.py parses what the commands share (`--config.model.kwargs.NAME=VALUE`, the check of
`--config.KEY=VALUE` keys); output.py sets what they print. The library (dnl_jax.train,
dnl_jax.data, dnl_jax.interop, ...) never imports this package. The old paths
(`python -m dnl_jax.cli.train`, `dnl_jax.evaluate`, `dnl_jax.analyze`, `dnl_jax.data.prepare`,
`dnl_jax.interop.convert`, `dnl_jax.interop.pretrained`) still run, for one release (CHANGELOG).
"""
