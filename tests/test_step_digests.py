"""Training steps on the emulator, bit for bit: SHA-256 digests of every parameter, every
step's loss and the last logits after two SGD steps of LeNet-5 and AlexNet-CIFAR on ``emu``,
stored below as computed on the pre-refactor code. Any change in which kernels run, with
which arguments, in which order, shows up here as a changed digest.

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
``GPUCNN_RECORD_DIGESTS=1`` **on the pre-refactor code** and paste what it prints into
:data:`DIGESTS`.

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


# {(build_key(), case): {array name: SHA-256 of its bytes}}, recorded on the pre-refactor code
# (commit 1af6ff1) with GPUCNN_RECORD_DIGESTS=1; the "no fma" entries with the emulator's
# -mfma removed from its flags (as on a CPU without FMA).
DIGESTS = {
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | fma',
     'lenet5-auto'): {
        'logits': '84ac04cb45f059a54a79890f13513ccec926517506a3679648a91e3e6ef6c5fd',
        'loss.0': 'ccf1a2dd6bb89cae76fa29c0f469664ca531fb62f101c4fdc27e1969d7f77a60',
        'loss.1': '83aca9fa3d3cd0237214e4232f9c0d0628695b1ec009fb7d9c41aad1edc14bd8',
        'param.0.bias': 'b23f25d45dd59a3481b8be6b41b21caa8217247db6d6d087bfdfe9a151e0ee44',
        'param.0.weight': 'b517fdc8c23b7f7d8ca612962ed247856576cc3bf524111ea35e7f65815ff5c9',
        'param.11.bias': '625dad7ade87728cf6f0af979874f40e2743d41628c80253b0dcf53bb042add9',
        'param.11.weight': '4bd2155ae047a9f31c0a38dc9e43ae65e2d5aeab63cd92da32e5d8d7bfb21aea',
        'param.3.bias': '95bce42e16396a3bb1601ebb06cbbd9384882342ba5d6d620531267eaf05d11b',
        'param.3.weight': '4287d2583d2f2848358bbbec60b3bd927e99b4d39f4237621f0eb267f6e77a54',
        'param.7.bias': '77c88cf425c3f98fa80f996552a3d8ab9d9373facd19644d0da1869f944f3473',
        'param.7.weight': 'a7b17cf3a0995d584e20de53a3d3beea46c342d91bde3edbdc0d7674309b1616',
        'param.9.bias': '96c19870f8a095c1ba8491c61ee1a9b6b5472c16dc7adf725c54b11396732740',
        'param.9.weight': '44cce9ebefa67deffbc0733f332f6bf1dcb3afbc72718c65a9eb6d5f8e5e7ec8',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | fma',
     'lenet5-im2col'): {
        'logits': 'f457c76804213128bf8fa6e2348b5306896ef328e8d65dfd67bbb64036a46d52',
        'loss.0': 'ccf1a2dd6bb89cae76fa29c0f469664ca531fb62f101c4fdc27e1969d7f77a60',
        'loss.1': '975345125e31ee597f786376b980b6c40060e822381bf40de54b0527c09f0170',
        'param.0.bias': '3763ac7075626569bbc2939185a7cedc5e4c11cf4839caf32bafd60cf2259e5a',
        'param.0.weight': '443fce6f2f2a9aaa5e6937a4da44c5a0e35737aef1e98eabae93251b5750e4c5',
        'param.11.bias': '070e71a9d1d150d4f045a933326c475bbefb8cc25825f1617350880f9837a1b4',
        'param.11.weight': '3e91f65ff99b615d992849d4957313bb551e3f5d549b97f8baaea0ac4f5d8cde',
        'param.3.bias': '94e32e0c79a45cd0acdd06a86f65368532c17b68ae8254254c4c24c7a1520090',
        'param.3.weight': '8b8356bb65dc07960085cdb5ab0ffd9e361c66e5a604bf9f144de26d69616139',
        'param.7.bias': '25b0b986d5babef5536d44c0ad3de67e0a10476c22a066dc53db99f5a3dfd215',
        'param.7.weight': '679c69cee81a4c5d62ccef69da6a77bd4643c7c449d1f8173f6160dff4d5509e',
        'param.9.bias': '51d1b7bf93b24c3fe05f319054c6165834ff0bc67b1af6f751ae566d0a69105b',
        'param.9.weight': '0327c8d30efb163f15e1287655d06d6f0a4effff275eb45b54b64dcb5a230c27',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | fma',
     'alexnet_cifar-auto'): {
        'logits': '8c398121cba2962bae65a3304c5d61a03ce679678b356627f45bd28eb50bd538',
        'loss.0': '4cf005a73da6d73169efa7a78a3ed5979584151406f180cc534e7565b0545824',
        'loss.1': 'd3630a16a84ec0c3dc11e2b48e7a120a21a475073cc0856e1448a123584d13d9',
        'param.0.bias': '42827193271a3452afe3c24877a08b8c5260453d6229f19cd92a96015758742c',
        'param.0.weight': '37845f6405dc83f24113131dfb5b9c7c4a248a74301793e44575670abe071a66',
        'param.10.bias': 'd3dc64e2c1a781255bfd60c92658232cb7cf175b08cab83ed3d98d8617cdb369',
        'param.10.weight': '92a8b0d8d1dbbad5bd699cdcd8f091e9832d4ee8563a851a056303ad6d63788f',
        'param.15.bias': 'b0e93bb15ccc8ec43a6b2d82b6f196cbc3443ccfcdf29f2fbf7e419edcd968cc',
        'param.15.weight': '26d9159e07df1aee6d9dc791886b488a99de121ebc6cdec1c571ea220b0ea5e8',
        'param.18.bias': '6d750c6d2ee9f3f986cdfffd1955bf9c2b621f7ccc07480df91b027772b099cd',
        'param.18.weight': 'f1040baa22afb11d801cd3507838b433ee8d02f113e83a8f1d504e6618860cdd',
        'param.20.bias': 'b6f69a9f0e1ccc1ad952401e8166d28a1ff4858c0cff3b99ca213df83d769dc3',
        'param.20.weight': '5032b6ab7cc13351ee383f4abaf4ccfd7a810f2fe549199d89cd3f29b619826b',
        'param.3.bias': '7d23482a3f8bb0662e74684dd1be56aef7f569d4a68d28b1814b5969b227bdf8',
        'param.3.weight': '5b4bdce80a2b63c046a45a6f62f63566dd860fe2024bd580b24fe6f2b5a01c9a',
        'param.6.bias': '3ab6453ad9d37f92b03d7f2f15b9b54e08ce830c9ab6b556bea7eb61bb3995e2',
        'param.6.weight': '30be8dbb48f93e093b3f10b6ea4be8b9599fc3dc0f4f1def31cd97284de98613',
        'param.8.bias': '56f1ae73cc1905103634ce009bbd1d965ffa35f5fc6783875c7ceecbe813eebd',
        'param.8.weight': '7e974f50fdbf247114db632d41d1014681b47102b7a5e7660191e8cebc9ef6a2',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | fma',
     'alexnet_cifar-im2col'): {
        'logits': '1c128e3e468c9e0b69a6e123db3d901712313f024e7feb9be3cfc0af1b8628f2',
        'loss.0': '74281a60eae3dc20b1533a4aed2245911d7a7aef31f09a349988772d4def7a2f',
        'loss.1': '0af440db416cd0de7550819da2fc1448fe3896280e9d2f4626bc41629bc293ef',
        'param.0.bias': 'f237a7c6cb3d8b0df6860085d3031b7b8770d843a124107e92ae488263d6d09d',
        'param.0.weight': '3d6568428276f2c19506ba017180f8f3eb100c0f8cbcbcfd655e5c5c4fa57eb7',
        'param.10.bias': '0b1aa8cd97fbbf0175d5092db84e63d30b5d0fde0d0ad1de5951ba7d0e5f1917',
        'param.10.weight': 'fa08e4a9e3e3190db72f4b725b1e46c7fa3a4b2b49500456c4a7a1d1f1327c8a',
        'param.15.bias': '308f525e4d70b533c8825c40737e592ac9f8dd8149e6f6e4055946cd5f504c23',
        'param.15.weight': 'f21debce8ca3081a04d0c87ded4fb565a6c74d8f1e2ce1d796ac93b7a6b12117',
        'param.18.bias': 'c0dd1f58266e8036c671240bce222e4ec107e6e6c24ae9a5aa09feeb0bed37dc',
        'param.18.weight': '04afdd0c8059ecb7a6d0f04c8f706d257e33996648a3c2d01f8c90dbf89485fc',
        'param.20.bias': '956d7dfe112ef83e842626748e32a1b1d845edac87111b05d3bd41ce8329aff2',
        'param.20.weight': 'c0f6b072183dec3613606aef44c6003c50dd94ca4990ce2ef73d81c145b6787f',
        'param.3.bias': 'ad0578c6f6839c0dfd7e9572addd9296aa10083ca517a4d67b0662d7cdf160a9',
        'param.3.weight': '2bc6c060d47617611c86f72cb052bf184128a302d8062c06f8c2d6e80b70884e',
        'param.6.bias': '71507c0d53404c064c28964a25602375410b00f87465375d5945706a3c88117b',
        'param.6.weight': '5a52ccc030878ec211a98de5f384b100a613b025ee3b88b6c9687c75138abb9b',
        'param.8.bias': '7b2d6115f4b313144172316c1a1643cba94d15ffc0ace96b81f374c1dc14c1aa',
        'param.8.weight': '92508147d03ddf5403740f16976f8db5995a4f9344113729efb3f50dad61cccb',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | no fma',
     'lenet5-auto'): {
        'logits': '6df795966bd5aa76221780dff15f66addf823c1ef816da5d8aab78832efabb59',
        'loss.0': 'ccf1a2dd6bb89cae76fa29c0f469664ca531fb62f101c4fdc27e1969d7f77a60',
        'loss.1': '558ab19d228807011e8d5f63db8081cd5feecd924e244d66bdaf0da432eb8b12',
        'param.0.bias': '4843d0cd3795b04acff0a0540d5d38aeba980c05743378b355591f23206a0e7e',
        'param.0.weight': '913b2fbbe83e6c1923891bb6e2611b383e67fe371158b71bb0da4a9d88d1fd05',
        'param.11.bias': '14564936bb6e9ebd9f47401e4fa21cb6d32db7a0560f5077426720303a462615',
        'param.11.weight': '08cf86b1d7f91f96e73dc709c60dec63eaf9fe86249ccac286d9724112d434e5',
        'param.3.bias': '32592ba1d145a6a550e2e2e136a8c78262e93da653b7ad16627502383f5d2eb2',
        'param.3.weight': '0b7be1ba92957d8506ae279cb74fc364c9cb80e1b748575b717dc2e12963f74b',
        'param.7.bias': '932d8e4772a9cbe681430c11ab752e1e8f74dae45668ab9282eb5d2154c77e52',
        'param.7.weight': 'ca6017ee7321e5d0f6ae5b019bbf60d4d55dbb19f880868e20514ccfa272116b',
        'param.9.bias': '66b0d1c5d2ef321808e05c3ab17fcc630b626d1502519554ff7dea95c0473806',
        'param.9.weight': '94e5febc5532f8f59eec38178651a5ef03348f86271bb8b85031e6e610f4786e',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | no fma',
     'lenet5-im2col'): {
        'logits': 'eb05abeb149eb1d055feba1170170c3561961b1df6cb787fe46bfa750ecd77ed',
        'loss.0': 'ccf1a2dd6bb89cae76fa29c0f469664ca531fb62f101c4fdc27e1969d7f77a60',
        'loss.1': '558ab19d228807011e8d5f63db8081cd5feecd924e244d66bdaf0da432eb8b12',
        'param.0.bias': '35431470b7f151af4b680ff91dbfc07929a6738518a14bc1e9c370a8690ac822',
        'param.0.weight': 'ad8fd99b643ee144c07c1ad7d7cd98902e439fb6901d665b06d7340781b37569',
        'param.11.bias': '06fcb863de2063fba517d39419f0f35ff80ddcbc4066658da0a55ad4849e7659',
        'param.11.weight': 'c06e5bbbc1225e6280a9c323cb22ee317dd2dff402812e74d6be5bb97ce21144',
        'param.3.bias': '6cfb0f06ab44de4c53846a53850e96f713fd31645bcbd7ac4ce2d60c7be98387',
        'param.3.weight': '481c7f3a78f14ba1028b5f2aebb2681f3f206297ccd5fd99ac51890d0f344266',
        'param.7.bias': '76f256ab798da5ec38daabfba7caccc58e93f60d365fb6dfaf9a3bc80fbe8908',
        'param.7.weight': 'a6a54f3560117d85ff4bffe26b6413b851efe83298900d735220061652a83ba6',
        'param.9.bias': '314d665e2e0916d1c5168b51a65a0ce3b22a95527e4f4479b3b8902489c73fa3',
        'param.9.weight': '8a02ea39a2c24edd7ecfc1479e6b5d07a1e695c646778249e3326d05f8394501',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | no fma',
     'alexnet_cifar-auto'): {
        'logits': 'd32491de6ca984a19d1512752f20fc67d4060cf83f5639e242358b2948d72b0a',
        'loss.0': '1177702672664ca544e5a120a2ef8544a6aea137431938710267c929b0ca5a16',
        'loss.1': '32ab2e76a43aa00d309293798b6194ebb78e2e8b12cbd6c1e3bf32edd96eb043',
        'param.0.bias': 'c99a81e6acc4cc0ff19ea47a87ae9487f00eac048f746b3382963abc911fb78c',
        'param.0.weight': '3ef484dbde89083249a0eef72f9832fe4d70d958d56cd61582acaf55b6314076',
        'param.10.bias': 'e1d0c753e4c037aed95d1c6d7afcc507264a6195be3aad03ddbee25cbe899994',
        'param.10.weight': '524c5d1e88476bde42dced2ae20e0fc3f507f91eb16e2abdba6ec1c7148e2b46',
        'param.15.bias': '79f38a22e322e9e434925e1d840a63b94c2bd386b1b11b9d5cd69d40155b8da9',
        'param.15.weight': 'e7f3b3fa3628844fefb984df10738035be8c6a99b7636d4c630451eaac3caa3b',
        'param.18.bias': 'fec5dc98a05e6ecd1387e67aae4dd4612a3e004691568af070898adf8eb31a2f',
        'param.18.weight': 'f5c5cefefdd04730baad46fa6b59cda882d329c01df86c9cc96775d82b9fe729',
        'param.20.bias': 'e9301d9e588dea8a4cb1848853905cd9a2d5c08989482a692eafcd9ebf3b3bf3',
        'param.20.weight': 'c0cbde809a03ffc4af1642bd2e33626e45297564d515af8d85cb328865b0123f',
        'param.3.bias': '970cc40e1f56b90e8d84b0bdd8d58b2344ff52c15ec2682a3b98cd0d23b6385d',
        'param.3.weight': '8bfe1db4059a7135db534eb3cc6651d5311099eccfb905fa5537b8b8d869c662',
        'param.6.bias': '0a93e1c405c7bc757c21a988c29ce7823fefee28eb9481c11bf2adcd2f27c779',
        'param.6.weight': 'e2d2e45d5b83397149b9d3c7ca008833493d4b70a3332f3efe972a2447eb7d7a',
        'param.8.bias': 'fc26331b03e8f7b7fa1d8aa12786969d4bed54d97275089fff562f41972eb5ff',
        'param.8.weight': 'af3fe216e4a38fe0ed0ecdf41e1a3dd24ab1d9ddda138a3525ad0f436dc8bfed',
    },
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | no fma',
     'alexnet_cifar-im2col'): {
        'logits': '583ee7603bf077407e04bcd48a7d06084731d7f40fb29d466079b12d31902717',
        'loss.0': 'e461ae58891439d526000fcb6c45685cc60d2eef2390dc4b143ab158bde12061',
        'loss.1': '4f5625c7267280b3be8fb89302371d9865a3d3f3c79c4de22957b81035c1ea2c',
        'param.0.bias': 'e83d1af20e4ca28bf17f99cd184dbd32c6802c0f8ce4fc3dd5dfe1f23792d955',
        'param.0.weight': 'b5f132c0668bcb2dba09654ffd8988e1b9d052ca91a3d6c992cd272e3276eac5',
        'param.10.bias': 'd7d8720ea52e32a6d3c000c9b10145f0a1264ad56e32e52a3b1cae63eab1c5cb',
        'param.10.weight': '9eb50896a5ac2bfa4b281fcf67745155cb8e2b461efc73ad10733cf5f48a2292',
        'param.15.bias': '6180a433525e5eb9281d0a3c6ed1f5e339def3b1082030d42756f288efd868a5',
        'param.15.weight': 'cd7550dda80d7f747b0a46823289d7878a0c9b6d039b74f423f717471f04a562',
        'param.18.bias': '3a0b60921af0e2b456c1c32640be460aaa09f2493830b09581b87a582d27dab6',
        'param.18.weight': 'e8f3f99545d6bfaa74be7f186298e05f498b82e4dc3e9e02d417082f3bb6ed8a',
        'param.20.bias': '62045faa9cc67ead1a0b3b72437221c84ffa0f06b3054314533347114aef36db',
        'param.20.weight': '35b62382ff0d824f697dde05a39bb0e205a950a32d9830549b5f001b59076db9',
        'param.3.bias': '2ec6bd7a908fde3dab4c79da5a1c5f05cc61f3e10514f935fbc4f5389c4bb00c',
        'param.3.weight': '262824b1c726081ee4bee20030423bdd34635a73ab3c7c2e216ff18d27e72707',
        'param.6.bias': '509717cd4c58c6465fea82f7d1f4851b580c8de404ef13a9fdde34ec2b08dfd2',
        'param.6.weight': '439048745a416490d2efa625c2861a847b6f2121b3dd64c9f138db1689bd9cc0',
        'param.8.bias': 'd46c6789606cd1ded09881715f81834792b8b165cb4fcf5636a79e0bb705e3a1',
        'param.8.weight': '0ce1efcf61797f3bf8c53bfd1cf067f3f709d1e072a307dbef82e5c05f6879b7',
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
                    f"the compiler and on -mfma; record them on the pre-refactor code: "
                    f"`{RECORD_ENV}=1 python -m pytest {__file__} -s` and paste the printed "
                    f"entries into DIGESTS")
    assert set(got) == set(stored), (f"{case}: arrays {sorted(set(got) ^ set(stored))} are new "
                                     f"or gone")
    bad = [n for n in stored if got[n] != stored[n]]
    assert not bad, (f"{case} ({key}): {len(bad)} of {len(stored)} arrays differ in their "
                     f"bits:\n" + "\n".join(f"  {n}: {describe(arrays[n])}" for n in bad))
