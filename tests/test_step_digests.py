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
DIGESTS = {
    ('g++ (Debian 12.2.0-14+deb12u1) 12.2.0 | fma',
     'lenet5-auto'): {
        'logits': '02bc7228cf80b5c385f8c7fbfd732cb995f15c343d7a99ddf6990fde6522d74a',
        'loss.0': 'ccf1a2dd6bb89cae76fa29c0f469664ca531fb62f101c4fdc27e1969d7f77a60',
        'loss.1': '975345125e31ee597f786376b980b6c40060e822381bf40de54b0527c09f0170',
        'param.0.bias': 'b8b868b2d009713c0409246181073f7cd2cb0b14890d46cf42b8c4a6388b408a',
        'param.0.weight': 'f4ff35ae00735d14b94698b9e2a18102a8bed5863ee6b713b2c4ee414a59b7a9',
        'param.11.bias': '09d25af5bd8ab122c69be595edcd9a7ecfe0c702ee5eaa9b3d01a7707902bb49',
        'param.11.weight': '5e75878108a7560a741ccd71f40d4891b372bd7804ad620bf83495ade9cf6bf3',
        'param.3.bias': '56fd6102e2563bbdace0bcb1ceda1206709776a5e48ab7b8251340d2c0b1dcde',
        'param.3.weight': '5f9937784188c9d2b2cd90f15eb1337b3108a367c7e47fbd88f055fc7b46efc7',
        'param.7.bias': 'e15efc51e0397b47bccc018c9faf7554d4e69c560c0932666ae39ee6271a085c',
        'param.7.weight': 'd87612eaecf14fb62127eac73a5dbc6e2c32d3f5859b789b9732c8751b113146',
        'param.9.bias': 'c0ccf94c5fe08855e8a7eb7c7e4cc4aff7bd00d58601a4024af224953db6713c',
        'param.9.weight': 'eb3b048bb6c5b05beee03f0da6d85fe91c67f80427e672cb68519a3d09016502',
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
        'logits': 'f2360b54b17daf9fc1475a29221449d18df0d047800fc5005a6c774dd71f5380',
        'loss.0': '381c28f90dace8ab3a4fde2174db7dfb78438354109c9c035a1e005948ed69fd',
        'loss.1': '668e9d671ec1f0cd2be97c853eb7739a53bd50a8c7951493b38931aa18ab5ea8',
        'param.0.bias': 'e52f3f11a469bb6533a9581a0096bc640d9f91eeda2161abea0f043089a1f818',
        'param.0.weight': '7148f6f7a759e560e9811d3e6aa59f31df7b66f3f45f81a94e67fa857537e0e9',
        'param.10.bias': '051895f469b8476256c2dd981e72ddf09979c07b2e478c099818d95767b185d8',
        'param.10.weight': '49acb8b672e0d458a24a5f7da83a29bbe5d9fd66a3d4163aed0d1578b9a0d8a9',
        'param.15.bias': 'c639ba4735a5def30fae66497a5b163bc212dd7ca62861276524d6e93b18b6c6',
        'param.15.weight': '20137012b71d7d41d90fdf4215d4ca7a7d1c718f0d177d08eaab944bedaf0125',
        'param.18.bias': '1dc034559f665b65408b55b86d53daa170049760875960fbbb3600d98db6456f',
        'param.18.weight': 'ac4eae07480aea7c11b22651ac86823aabfac011add530a84a9434cb5a37e382',
        'param.20.bias': '4eb8499107d4f5979c2fe01d7f8efe7ea8f680e876012985d58375605c9e1432',
        'param.20.weight': '4fb3d68a2c97304ce7174511d4ed8ce8a601d0d88008a3ad6f4e88b46434960b',
        'param.3.bias': 'd6db7a14b1d76a56757f5d88617f57d3b6a8710d2a2303a334807f6bbeea9609',
        'param.3.weight': 'a337903355814b53c0afa46c553616f2145e722af8128b5c21d9e0a3b667a448',
        'param.6.bias': '1b2fc907b9e464b27c9444e2b01ec88515f216f13f8872533a9f34e0b99be615',
        'param.6.weight': 'ef97f614b5e089a81986799213052939c792df783fac4b278222327a1f9b3610',
        'param.8.bias': '4ac5272ea64dc2dbb8e4484618aca72ad3456863b38e5a77ea2bdbac78dd1c8b',
        'param.8.weight': '5b4bcb39509e3999988a6f152ada0ac69d071ea438660ccedc1d795694d5d5b2',
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
        'logits': 'ad3cb36f11d64282a5c25ae901d8c4837b9756ee11ea7676ddaab567ae1266d7',
        'loss.0': 'ccf1a2dd6bb89cae76fa29c0f469664ca531fb62f101c4fdc27e1969d7f77a60',
        'loss.1': '558ab19d228807011e8d5f63db8081cd5feecd924e244d66bdaf0da432eb8b12',
        'param.0.bias': 'aa71857cf0ffe2da96b4dbc4901a329f5041b94cd7162f84fb8bc1700222c1af',
        'param.0.weight': 'd3af04671c656a276496caef293a50e6165f1309fce24928485843446de0621d',
        'param.11.bias': 'c5058d75ea398327bb207b36e195a2501bf8d0fb19921ba11832e53e283de501',
        'param.11.weight': 'f44884c3d60bb142bf670faa37179173a772a65d0d66341f1acb2f325a1a1436',
        'param.3.bias': 'd03dcd84ce3e24c4a76a56fbb4c8bedb39b092cdbc92c622716ea0f915f9e740',
        'param.3.weight': '3d46a2e61aae542954a20829344b2ba02f2f7060fc53b480eed0f7e5b2ced2ca',
        'param.7.bias': '6ff2f09c1daf00a205f011312a7db6206719d18886ed9400f719eba681b104a3',
        'param.7.weight': '77c21c4b192fef9c0fec2b0762f0e40424fbc41e06733a365126e5ab7e62ccb5',
        'param.9.bias': '29d1d34b40a8c9eac2848671a577146744d09b3a26a3e096f4485432752066c3',
        'param.9.weight': '0d3b7077335a2499f43960884d652473a5f8f6106a81cc277ad497742ab16327',
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
        'logits': 'e8eb70b5435a377599af55c25ba456aa04e662e128d9c1390d2a59345ee23510',
        'loss.0': '847f121384864334fcf6f4788eeebacde84cc7043006a63e6c2ed3d02e6d0742',
        'loss.1': '4738cf252aa38770e68b6a9cb97ce24917e54c8a704d56df914397889ea41987',
        'param.0.bias': 'bd1337699659550a150a4216c01f8a99627431eb7b67755f77c866a3f12f2572',
        'param.0.weight': '90aa1f03f01160a3a0a5a9f0e3114951de4cd1d7e3345908c80b7d550f237659',
        'param.10.bias': 'a67a862a506fd86bb27aa2bd54e8eec4ca4fd69ad0794984d68b7a4ae408c108',
        'param.10.weight': '9f01fb5d06b1d5c68a42a034e90e2f65ff9fb0feb8bea51b2f2f29956c79bd7e',
        'param.15.bias': '4d4ce5dc6343550bf5c7ce5b2a46657d51ff67feb37bbda5c43e14288624f9ee',
        'param.15.weight': 'dfee701e0910bad08d6fd86bcc0b8bc620c4b07785b4068d272c4d0ad4258e71',
        'param.18.bias': '70d96c72e95b052ea66de8d03264e93d6a880e7d0ceede490c978faa25cc0dd1',
        'param.18.weight': '99982811baa048f3f7563c97a24384826fd56d2c4694080a60fce0fa8cb73023',
        'param.20.bias': 'b561ccb01f1e11a42c4cdcbe5249a3d1d7999744cc8b103477f9a2bfd3ad55af',
        'param.20.weight': 'bea9463aaf98aed108867a0797ccd001aba0fd9962d2cbbb82795c5c1dcc5850',
        'param.3.bias': 'a1d7dc370cc44c3f978b4c998b0d344569195629da95457212b45afaa30481ea',
        'param.3.weight': '8602efbb5261f5736535738000ef52f0be9703c538094d18c1503271a8713fab',
        'param.6.bias': 'cdd5d82ed3abc66233e284659b23393f31e11c3133675e6d768b225e3d0e0ce0',
        'param.6.weight': '2de45e111c4e82e1e0520ea2c509b9fab029672f790548922ad962785d9e26cd',
        'param.8.bias': 'e25bb665d65e0f17969b510020cd4835a644a20e0af8db312a7f41eedf715b4f',
        'param.8.weight': '0b0627a8e5ec1e66c7584c81c4b64d4344d22937e86d64f0594e7c11d93aff75',
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
