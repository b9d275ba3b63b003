"""The PyTorch architectures sparsr reads from a state_dict: one module each.

An architecture module has
    NAME                    the architecture's name in a converted checkpoint
    detect(sd)              its hyper-parameters read off keys and shapes, or None
                            when the state_dict is not this architecture (raises
                            CheckpointError when it looks like it but does not match)
    scales(hyper)           the scales the weights can run at
    build(sd, hyper, scale) (model description, tensors) for checkpoint.save

Adding an architecture is one module and one line below; detection tries them
in this order and the first that recognises a state_dict wins.
"""

from . import carn_m, dncnn, edsr, fsrcnn, imdn, msrresnet, rcan, rfdn, rlfn, smsr, span, srvgg

ARCHITECTURES = [smsr, srvgg, fsrcnn, dncnn, carn_m, rcan, edsr, msrresnet, rfdn, rlfn, imdn,
                 span]
