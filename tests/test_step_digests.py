"""Training steps on the emulator, bit for bit: SHA-256 digests of every parameter, every
step's loss and the last logits after two SGD steps of LeNet-5 and AlexNet-CIFAR on ``emu``,
stored below as computed on the pre-refactor code (re-recorded once since, on purpose: see
:data:`DIGESTS`). Any change in which kernels run, with which arguments, in which order,
shows up here as a changed digest.

What a run covers: the fused conv + ReLU + max-pool path (Sequential folds every conv, ReLU,
pool triple of both nets), the conv algorithm ``auto`` picks on emu for these layers
(``implicit``: no 1x1 conv here) and, run by name, ``im2col``; the linear layers with fused
ReLU; AlexNet-CIFAR's dropout masks (training mode); softmax cross-entropy; SGD with
momentum and weight decay.

Fixed seeds: the model's initial weights (and dropout seeds) from ``build_model(seed=3)``; the
inputs (standard normal) and labels (uniform in [0, 10)) of both steps from
``numpy.random.default_rng(7)``.

The bits depend on the build, not only on the code: g++ contracts ``a * b + c`` into FMAs when
the emulator compiles with ``-mfma`` (it does so on CPUs that have FMA), so the stored digests
are keyed by the compiler and whether -mfma is on (:func:`build_key`). On a build with no
stored entry the test fails and says how to record one: run it with
``GPUCNN_RECORD_DIGESTS=1`` **on the commit that last recorded them** (see :data:`DIGESTS`)
and paste what it prints into :data:`DIGESTS`.

``/work/digest_numpy.py`` prints the same digests for the numpy backend (built with
-march=native, so those are compared old against new in one sitting, not stored).
"""
import hashlib
import os
import subprocess

import numpy as np
import pytest

from gpucnn.models import build_model
from gpucnn.nn import SoftmaxCrossEntropy
from gpucnn.optim import SGD

MODEL_SEED = 3
DATA_SEED = 7
STEPS = 2
# bench/nets.py's train_step (SGD, momentum 0.9) plus weight decay, so its term is covered too;
# lr 1e-3, not the bench's 1e-2: on these random inputs AlexNet-CIFAR's loss goes 18.7 -> 1745
# with 1e-2 (saturated softmax), 18.7 -> 19.8 with 1e-3.
LR, MOMENTUM, WEIGHT_DECAY = 1e-3, 0.9, 1e-4
NUM_CLASSES = 10

# name -> (model, batch, $GPUCNN_CONV_ALGO or None for auto, the algorithm every conv runs).
# Batches keep the whole file at about 7 s under emu on 2 idle cores, 18 s with them shared
# (AlexNet-CIFAR is the slow one: about 0.35 s per image and step on an idle core pair).
CASES = {
    "lenet5-auto": ("lenet5", 32, None, "implicit"),
    "lenet5-im2col": ("lenet5", 32, "im2col", "im2col"),
    "alexnet_cifar-auto": ("alexnet_cifar", 8, None, "implicit"),
    "alexnet_cifar-im2col": ("alexnet_cifar", 4, "im2col", "im2col"),
}

# Read when the emu backend is created (workspace bound -> dW split into partial sums; grid
# cap) or per call (the conv algorithm): each changes which launches run, hence the bits.
BIT_ENV = ("GPUCNN_WORKSPACE_MB", "GPUCNN_EMU_MAX_BLOCKS", "GPUCNN_CONV_ALGO")
RECORD_ENV = "GPUCNN_RECORD_DIGESTS"


def train_arrays(B, model, batch, steps=STEPS, model_seed=MODEL_SEED, data_seed=DATA_SEED):
    """{name: host array} after ``steps`` training steps of ``model`` on backend ``B``:
    ``loss.<step>``, ``logits`` (of the last forward) and ``param.<layer>.<name>``.

    Public (no underscore) because /work/digest_numpy.py runs it on the numpy backend."""
    net = build_model(model, backend=B, seed=model_seed)
    net.train()  # dropout on: its masks are part of what is pinned
    lossf = SoftmaxCrossEntropy().bind(B)
    opt = SGD(net.parameters(), LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, backend=B)
    rng = np.random.default_rng(data_seed)
    out = {}
    for step in range(steps):
        x = rng.standard_normal((batch, *net.input_shape)).astype(np.float32)
        y = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
        logits = net.forward(B.asarray(x))
        # Copied at once: what the logits buffer holds later is no business of this test.
        out["logits"] = B.to_numpy(logits)
        out[f"loss.{step}"] = B.to_numpy(lossf.forward(logits, B.asarray(y, dtype=np.int32)))
        net.backward(lossf.backward())
        opt.step()
    out.update((f"param.{n}", B.to_numpy(p.data)) for n, p in net.named_parameters())
    return out


def sha256(a):
    """Digest of the array's exact bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def digests(arrays):
    return {name: sha256(a) for name, a in sorted(arrays.items())}


def build_key():
    """What, besides the code, decides the emulator's float results: the compiler, and
    whether it compiles the kernels with ``-mfma`` (the emulator adds it on CPUs with FMA;
    g++ then contracts ``a * b + c`` into fused multiply-adds, which round once). Measured on
    the pre-refactor code: without -mfma 11 of LeNet-5's 13 arrays and all of AlexNet-CIFAR's
    differ (logits by up to 7e-6 and 9e-3); -mavx2 alone, the thread order between barriers
    (forward/random) and the number of emulator workers (1/2) change no bit."""
    from gpucnn.backends import emu
    version = subprocess.run([emu.CXX, "--version"], capture_output=True, text=True,
                             check=True).stdout.splitlines()[0]
    return f"{version} | {'fma' if '-mfma' in emu.COMMON_FLAGS else 'no fma'}"


def describe(a, count=4):
    """A few values of an array, exactly (repr of float32), for a mismatch message."""
    flat = np.asarray(a).reshape(-1)
    head = ", ".join(repr(v) for v in flat[:count].tolist())
    return (f"shape {tuple(np.shape(a))} {np.asarray(a).dtype}, first values [{head}"
            f"{', ...' if flat.size > count else ''}], sum {float(flat.sum(dtype=np.float64))!r}")


# {(build_key(), case): {array name: SHA-256 of its bytes}}, recorded with
# GPUCNN_RECORD_DIGESTS=1; the "no fma" entries with the emulator's -mfma removed from its
# flags (as on a CPU without FMA). First recorded on the pre-refactor code (commit 1af6ff1);
# re-recorded on purpose when the fully connected layers' GEMMs got split-K (issue 17, part 6:
# gemm_plan splits K of a GEMM with too few output tiles, e.g. AlexNet-CIFAR's 2304 -> 1024
# forward at batch 8 into 9 parts, and adds the parts afterwards), which changes the order of
# their float32 sums and so (nearly) every array from the first FC layer's output on. Before
# re-recording, the same code with the split turned off (gemm.SPLIT_MIN_K set beyond any K)
# reproduced the previous digests bit for bit, both builds: the kernels' new k_last
# argument, the parallel ordered sgemm_sum_partials (same per-output order) and the plain
# GEMMs' tile choice change no bit.
# Re-recorded again (the "-auto" cases) when the FP32 implicit-GEMM convolution got the
# SGEMM's 128x128 tile (issue 18): implicit.wgrad_split sizes the weight gradient's split over
# the batch from the tile, so the number of partial sums (and their order) changed. With the
# split turned off in both (one part), the old and new kernels gave bit-identical y, dx and dW
# on LeNet-5 and AlexNet-CIFAR layer shapes: the re-tiling reorders no product within a sum.
DIGESTS = {
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | fma',
     'lenet5-auto'): {
        'logits': 'c7a3bc46f47e99c2629c5965e171862a206b73bc8e9df2933f9996f22013b34a',
        'loss.0': 'ccf1a2dd6bb89cae76fa29c0f469664ca531fb62f101c4fdc27e1969d7f77a60',
        'loss.1': '975345125e31ee597f786376b980b6c40060e822381bf40de54b0527c09f0170',
        'param.0.bias': '5f8f6b9b7335869667c5101cb8f0d9bf6432dd01aab65c2d1a5efb7b6a66d684',
        'param.0.weight': 'b45d69a46c399758b42c24536ce7d3871e6e869ca7c3aa6b8d8ec836a10dfc79',
        'param.11.bias': '15ffeed2e04763144bae691557a29d6a8b55f31603a996d8910e8b9f17e78d28',
        'param.11.weight': 'a00a074367af3bfed6d315b3c7aeb464d15a2251a3627904df9f9650fea7574a',
        'param.3.bias': '49816b094aac89789fd3cb60a07a882b0a29ad199b2d842c7d0c40ff3088b5d4',
        'param.3.weight': 'a198daa11e13dcb8750f92412b90a4dc26051a75aa98c3c84063f1524f8838d7',
        'param.7.bias': 'aa2dec411cc0c7dea9fb0303221006a62067cdbcea28b0e61db585bd93a52328',
        'param.7.weight': '7fbbf24b3de3e21615815c442b93e090ac097f2b03fdd7b9978f0805d67eb9ad',
        'param.9.bias': 'f58a1815088519a799ab9be8cb3afdcccee13e58795cdadf8919c1efc1611014',
        'param.9.weight': '4ab209b09aaea72af2f019402284d1359dd41048085196f8773ba3a3229790c5',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | fma',
     'lenet5-im2col'): {
        'logits': '8e69a3a5d38446a5edbafb2dc42b93ded6a77bb7e0d065374a3399e318701e4d',
        'loss.0': 'ccf1a2dd6bb89cae76fa29c0f469664ca531fb62f101c4fdc27e1969d7f77a60',
        'loss.1': '975345125e31ee597f786376b980b6c40060e822381bf40de54b0527c09f0170',
        'param.0.bias': '454bdc21709647fb66eff41c84b65c139eb555500e605d193f6ebf2ffa187b67',
        'param.0.weight': '18e435e85c351880117ab8d544411535a6a10b391c1eca21ef78b44110fbebb2',
        'param.11.bias': 'f7bbe70f2500838b5c24c6a297351dfe6f35880817b2af91c3c6a0be48ecad8f',
        'param.11.weight': '47e465b86063df55b703222bf1641b79fd7be5e95bfa0bd23e75c68a4976355b',
        'param.3.bias': '9b2fe117ffcc3e46c05cd2ff87261ec61d2f378a04073f70cc27569db0ad1c9a',
        'param.3.weight': '2d18004501b2158018a667f44cc542852e6b4c1a136b75f22c2893b0b2412c96',
        'param.7.bias': 'abea8dc96b919bf51c4486d04187d8454433d2eff2394b60627a429acbe1ecf4',
        'param.7.weight': 'c61003b069b7ee02c27384010b4ddbe0aeadb6055f9f7a038b1c046103570aad',
        'param.9.bias': '94052a160d9c62b3a399c3cf3fc29ea5c9e3b0b986508325c6c8831a965653a3',
        'param.9.weight': 'fd90faaeb507dbeab9fe925bf98bc28e99eb21fdab9edfb750d48c4853a13e38',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | fma',
     'alexnet_cifar-auto'): {
        'logits': '2229f576c715fc0049b900b29600d7d39fb3c0541026d82ffb5075eb69124138',
        'loss.0': '381c28f90dace8ab3a4fde2174db7dfb78438354109c9c035a1e005948ed69fd',
        'loss.1': '4738cf252aa38770e68b6a9cb97ce24917e54c8a704d56df914397889ea41987',
        'param.0.bias': '8ddec4b2a01748b7d9da3075ae0b6fe9ffdb2df9a8a01e56d2cd13634355b635',
        'param.0.weight': '83b1eee4dde8950308efbb6776f967149327479ff3abddaa1664d0337e7a55af',
        'param.10.bias': '0ce7bdea1c6ab04d47d118f499f10a729ef523c668c40bdfe5ebd44d77a4f67d',
        'param.10.weight': '225148c00cc6a44ce58a36792944a81fba2ad4472a42aab344b5dca2dfa50e0a',
        'param.15.bias': '4022f04695289a93a8737577cb0e4c75daf60b7fd083e1a8e087022bef3969e3',
        'param.15.weight': 'aa506627a736f8f648ef9b59deeeab4e9082780afd3ab2ebf3c353c216df8531',
        'param.18.bias': '7ad96385aea405f74a5725c84376b6a2d8a3c720e0f4173d0c975d9591c35e91',
        'param.18.weight': 'f9c3b72ad3465aaf864059e2899daf5f709a0011df4161076e7ea584b0c23c1d',
        'param.20.bias': '03fb0c5348154e1d14111f48da393c36343b56f6e17b3f689f7d8ebe9c278e2e',
        'param.20.weight': '259a01f3395021c5b37f836b2abb5bf34ab3149fc272a92c40d7b4b45f03f9cc',
        'param.3.bias': 'bba71101c95e782c77143013f305240d730efd2431019e2978ed0543f85af3db',
        'param.3.weight': 'd9816fdc445420e36e741b2868e4315fc41db303a02169b2123aabfff4797a4d',
        'param.6.bias': '09044783f1a21c293b25a5fdabc735374a509db352ffa400a6b8d67aad3c9c79',
        'param.6.weight': 'ebc0af8177a499287d2c234448d3d6c51023fbed581a22d546b86c037803cb92',
        'param.8.bias': '9ca3d9adf10889fe3ef3448167887a1b2898d97080d46aeab2ad66356a69cdd0',
        'param.8.weight': 'a1ef2213aa63b0369d78255218faedd5e0401ce6b7816bae5a8fe8bc6c9c7450',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | fma',
     'alexnet_cifar-im2col'): {
        'logits': '1c19478ce3ede3bdd498e19f70ae0627e06a80a0adc004acf3225e2d5732ea6a',
        'loss.0': '2a393550549fc63db921f599687f08eee7838897408b24b19fcfa658af6dbaf4',
        'loss.1': '45807f0ecb24bdc70d81337e487dbd2b02e276bb0a897c7534cda23414064613',
        'param.0.bias': 'cab760f389788b4f4771806b66fd1b52ee5dbb2939432bfb599000fef5472db8',
        'param.0.weight': 'ca9c6fb92a7e1b2565dc4b0d7749e6bf38af00d787dfe6944ba1e02339507dd9',
        'param.10.bias': '115f679e757a26f443502a39eb056f6f82d9b001a3634c887cd4976c24f56e5b',
        'param.10.weight': '386dd2121c705b2163c8ade6dea323d0d565d0458b06ea0a86d0271542f3d419',
        'param.15.bias': 'ee0bdb0c31dc26453e6d2d66ba0efe93410746fdcebdf18d445689243ec0bb49',
        'param.15.weight': 'cf4084dbe85c2e29ace926429c073668c67329a8c08b2e665f5b7301d5cccdce',
        'param.18.bias': '6f5814140fd2f86362b0f4b8a505c42bdfa0d7f6ce8a77cb471dc9a5a627822c',
        'param.18.weight': '80d71dff4bf531600fcc74b7bd6eda4653b35a292e5670944e186d2bef999e2f',
        'param.20.bias': '9fea315964d549d6b9fc68cc63c091e9f4b111fcf45007258eb3f4d6c5f6221d',
        'param.20.weight': '2bcbd87b28c0b2e2950dc05cf925c5c977b2478fe8d23205e33379215ea5b358',
        'param.3.bias': '4a80a7c677dbea714e2ca0bab5a2fd4d1f76c97a3f3fa412eea771c16bb4c7ed',
        'param.3.weight': 'a04c93baffb806da4a35f0480283db586920475244f625b41ddddd49e8a85249',
        'param.6.bias': '25eef84ba0a488b2b2ffcbb8300910fafb7d4f492c93e3a3244df48d2e7fa992',
        'param.6.weight': '2718f3a7cd6acee2108aeae24eca0a8dfe5d60c481ab1154706f3d6c461e63af',
        'param.8.bias': 'fb229ccbb8e7dcebac8bc4cb9eff82501b78717f4f9d4efff0d2328badb445d3',
        'param.8.weight': '15033ab7ee6d18e24c6ef4bb8b028ccb1f7ad074191d19e2559565dbd07c8d1f',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | no fma',
     'lenet5-auto'): {
        'logits': 'b3562ba6164887846afaa452bbd2f017d21f1f21a2193052a29a77f7b7f0af93',
        'loss.0': 'ccf1a2dd6bb89cae76fa29c0f469664ca531fb62f101c4fdc27e1969d7f77a60',
        'loss.1': '558ab19d228807011e8d5f63db8081cd5feecd924e244d66bdaf0da432eb8b12',
        'param.0.bias': 'fe37e1307f3f912afa846f2af3bcc899df50771fffec874e6feec90a2031fced',
        'param.0.weight': '5924692f0eb1a39f42220851f31669773a7656afe1f50c6e094bb12dbd398a91',
        'param.11.bias': '39881801087ac30067eadb4993d965e5909df4a3e69115624819980517d2f7f8',
        'param.11.weight': '705acf3ff91975c5344d115c61509ab3be1a47ad65ac331b6d0f1d575fb0a71a',
        'param.3.bias': '3f3e74318befba34fc10087479fc450d321d542f47c2121a8c154dc485df1f8a',
        'param.3.weight': '729404ea4d285489f888a789ba948f9a08a79ef06f6f564f4467963f82a93319',
        'param.7.bias': '42b25ca44f3e3e3bc58e3185ec239b6636f983ec54d61df03080078bb20f4079',
        'param.7.weight': '44ca64d0784db70d2037fe45b65b027f01195591912ccd1bc3bb45ff1985d22c',
        'param.9.bias': '445fe7159afdf9dbfd177a25d4f0ac28163f354b53d722b0d9fcbf41dfa382eb',
        'param.9.weight': '9b8fe366cb930572da065383ce4017570633adf434327a531ea6449c1ac29d5b',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | no fma',
     'lenet5-im2col'): {
        'logits': 'c7d1f407af0fa07c27fc83c03f49f62d0806bbfd7dbc64e98e6a44d568260c54',
        'loss.0': 'ccf1a2dd6bb89cae76fa29c0f469664ca531fb62f101c4fdc27e1969d7f77a60',
        'loss.1': '558ab19d228807011e8d5f63db8081cd5feecd924e244d66bdaf0da432eb8b12',
        'param.0.bias': '0c247950efbcb8a3a02294fbedc6f5b5c8f6755691ca2f314abd3e79c24c1e6f',
        'param.0.weight': '05b101a6ef69fc98e3045753d3e1d1f6ba2f170d203e8d3bbb848336b8fd5e60',
        'param.11.bias': '34eaecc7257982198e989f1b88e09092dd726377c23a5c15c7d5ed579587e015',
        'param.11.weight': '1eb0a9f63e8954d715fb9af0c3b09081386cda8b727fb5d599a9e929d936c2e7',
        'param.3.bias': '688a28d78a0e7c0a3943533ffd6544e36ee505b17b3f882c8c88080632024e9c',
        'param.3.weight': '14321323958f3ade25e77f6aee1cfa47b9d503414446cb94d98c37109d0e72bf',
        'param.7.bias': '4a7014686d255ec910efcc8ff73ace13fb452676b8f0414b4b304d6f4a90c75c',
        'param.7.weight': '716e818037760be9ec950a927fe9345c417b822769bc70dc3df3c6fc7b1e1c68',
        'param.9.bias': 'cc190f4b354f41adbbd547b61e5e5cd40a6fcd624da4bf4a4de6c2b4f53dfbb9',
        'param.9.weight': 'ee71baebc21a5ed5036fea96ff8e36b1ebb54cb849912437c83f5b4f7e202198',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | no fma',
     'alexnet_cifar-auto'): {
        'logits': 'f37405b33c92fed809511a7836259dc7888c73355669285661d38908d0b11a1f',
        'loss.0': '847f121384864334fcf6f4788eeebacde84cc7043006a63e6c2ed3d02e6d0742',
        'loss.1': '4738cf252aa38770e68b6a9cb97ce24917e54c8a704d56df914397889ea41987',
        'param.0.bias': 'fb045ff6ccefc4b8c539918c32b1f120254e7694fe5a8644ac9fbdf0b11447da',
        'param.0.weight': '6c86cc18167fc2f8103ba2132ae2214f56f1b5d50a5a8abd042b96fdf23077a6',
        'param.10.bias': '009b01b6a6d94be04ef3dbd5cdfffb631bd2bf36dbf7cda0f4d08a5fd8e2095c',
        'param.10.weight': 'f11bb6c0ea17174648b5287b069d7811c882a9b54146a3f98fed146f2613af27',
        'param.15.bias': 'b58252adebf9cd91718c9b67c6df90f650310c06e7f0198e9c1e1c1a7f89b4f3',
        'param.15.weight': 'b9ae74d4427e552045712fe12211ed1878a60bda3a29232afb6c53ee0d1efba7',
        'param.18.bias': 'c2d8831f1daec19cb549ac9ce69a04b41e8444c85ade8f04963ca79ab7b1fb40',
        'param.18.weight': '7a3fa2161b07bac7c4160f3d98027703bc71e0b7cd83a0a7d4719aff45054337',
        'param.20.bias': 'b81189167a0b733ad9025136764cbf03ecc9319937defa6745da1788b00b42b8',
        'param.20.weight': 'adf8f19311a52c1d9b63b0218022c0b34b93575e86375ed19254ce50af005e91',
        'param.3.bias': '922ff516578953816448134bd940cd0be908f9f78eb362ee88ce83bdd9661f47',
        'param.3.weight': '36febf633681d4f2d77825bf80f01ea7eec15dd40b322e2935b22831fd1da5df',
        'param.6.bias': '5e95855858096096e22aeea8fdbf1a12cc6f365fa67d8ba9e39550b1237a15da',
        'param.6.weight': 'a3262183487d4f66c551b773baf678a7fe1fcad67f5c1b0a4d0e39c72067ed58',
        'param.8.bias': 'a9749ebf57b00fff9d848a5137c52c1d24039a7ccf1558fd265cc189d868382d',
        'param.8.weight': 'c31011c03b558a737d0811992b4e681f0f6b94ed0ff35ea6a943b12f1934c801',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | no fma',
     'alexnet_cifar-im2col'): {
        'logits': '73b745df57dcf17c1fd159e85c9ad9c18d6ac6a2385ba86a4835d07ed718c9a2',
        'loss.0': 'a6360763da817890f3cb8927100e3fc6931dd9d33317fea332d004aec32436c8',
        'loss.1': '8bc078c0537194dd5cf639d3b7482a7ff1b799809834f3a45aca657d68ecad95',
        'param.0.bias': '746e7fcee14627b15eac2c9dd1c1c8c817986f974ce780e1fcbb0bd3a3070425',
        'param.0.weight': '37df8006889259a302404ee2a6b53c7a748b848bc41406155257b241c0acc1fd',
        'param.10.bias': '838e237081bed32e90bebea309811a641a67b08bcf4b95e50beb8475ce30da2b',
        'param.10.weight': '8d0beff5431c7f4f8e207dfd163e0494fff35cb6d3b31457f2c50fca8f8ac359',
        'param.15.bias': '8ca65352390f0e093dbd15206467044022019cad5a792993b2da70744a4fe7de',
        'param.15.weight': '5dcd8fb27369fb6b3fcbd3f8d73c63ed97441f9004eb6ced1dccc49fe0ffe13c',
        'param.18.bias': '0d03fa46837101d3849bf80f41730af84a347eba250b897c61fa9a950260e9cd',
        'param.18.weight': 'b3d15549fe75b12772ba696f643e25a22b383066485f3abacf4ed13998089ca5',
        'param.20.bias': '4e3929635fe77360191d80260c93338b348c680c15dd12c6a466d3e253ee40c2',
        'param.20.weight': 'b246305b2f74e589e339d04cdcfb65a7a94a7a8cf580810a4fcf3a9c20c10103',
        'param.3.bias': '617fef0583410ae80b29b2cb44f1fe671e757f84a100b002013f8ee06c111027',
        'param.3.weight': '6ec6a047b5a27a235d457a9fd68da7bd5901ac6ee7967909c921b29c96ed94eb',
        'param.6.bias': 'b271936c510a43a83d91ba67954946bc3c40053295d22018f378716b9dcce6a0',
        'param.6.weight': '057eb506a62345e27c31861f36a315a983ace49a5e0dacd0cba9289a16a9cf7b',
        'param.8.bias': 'd0dcfd18146b820b3a2fe1b7f210c8ebed61252f28c509afcb231015bd54dd65',
        'param.8.weight': '0d106f7022b96c5a215062d6790dbb24733ff5ee4531c91709742a7345b8704a',
    },
}


@pytest.fixture
def emu_backend(monkeypatch):
    """A fresh emu backend per case (its own workspace buffers and algorithm choices), made
    with the bit-relevant settings at their defaults whatever the caller's environment."""
    from gpucnn.backends.device import make_emu_backend
    for var in BIT_ENV:
        monkeypatch.delenv(var, raising=False)
    return make_emu_backend()


@pytest.mark.parametrize("case", list(CASES))
def test_training_step_digests(emu_backend, monkeypatch, case):
    model, batch, algo, expect_algo = CASES[case]
    if algo is not None:
        monkeypatch.setenv("GPUCNN_CONV_ALGO", algo)
    arrays = train_arrays(emu_backend, model, batch)
    got = digests(arrays)

    # The digests below are only meaningful for the algorithms they were recorded with.
    ran = set(emu_backend.conv_algorithms().values())
    assert ran == {expect_algo}, f"{case}: the convolutions ran {sorted(ran)}, not {expect_algo}"

    key = build_key()
    if os.environ.get(RECORD_ENV):
        entry = "".join(f"        {n!r}: {d!r},\n" for n, d in got.items())
        print(f"\n    ({key!r},\n     {case!r}): {{\n{entry}    }},")
        pytest.fail(f"{RECORD_ENV} is set: printed the digests of {case} for {key!r} (run with "
                    f"-s to see them) instead of checking them; paste them into DIGESTS")
    stored = DIGESTS.get((key, case))
    if stored is None:
        pytest.fail(f"no stored digests for build {key!r} (case {case}). The bits depend on "
                    f"the compiler and on -mfma; record them on the commit that last recorded "
                    f"DIGESTS: "
                    f"`{RECORD_ENV}=1 python -m pytest {__file__} -s` and paste the printed "
                    f"entries into DIGESTS")
    assert set(got) == set(stored), (f"{case}: arrays {sorted(set(got) ^ set(stored))} are new "
                                     f"or gone")
    bad = [n for n in stored if got[n] != stored[n]]
    assert not bad, (f"{case} ({key}): {len(bad)} of {len(stored)} arrays differ in their "
                     f"bits:\n" + "\n".join(f"  {n}: {describe(arrays[n])}" for n in bad))
