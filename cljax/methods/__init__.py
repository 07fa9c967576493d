"""Methods by config name: each builder returns a `cljax.methods.base.Method`."""

from cljax.errors import one_of


def build(config, vit_cfg, num_classes: int, num_tasks: int):
  from cljax.methods import coda, hide, keyed, smope  # pylint: disable=g-import-not-at-top
  builders = {
      'hideprompt': hide.build_prompted,
      'norga': hide.build_prompted,
      'l2p': keyed.build,
      'dualprompt': keyed.build,
      'sprompt': keyed.build,
      'coda': coda.build,
      'smope': smope.build,
      'sequential_head': hide.build_sequential_head,
  }
  if config.method not in builders:
    raise one_of('method (config.method)', config.method, builders)
  return builders[config.method](config, vit_cfg, num_classes, num_tasks)
