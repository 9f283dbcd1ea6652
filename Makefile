# perceptlab — every target that runs code depends on `setup`, so on a fresh machine each is one command.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PL     := $(VENV)/bin/perceptlab
STAMP  := $(VENV)/.perceptlab-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# No hub access at run time: every model and dataset comes from a local path.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup test test-fast demo study smoke tensorboard bench clean help wheelhouse lock gpu-check \
        pi-nights pretrain-pi pretrain-random perceptclip-koniq perceptclip-lamem perceptclip-emoset texture-bias-suite

help:
	@echo "make demo        the whole toy-world study (set-up included), report in runs/demo/report"
	@echo "make study       the same study with 3 training seeds per arm, report in runs/study/report"
	@echo "make test        the test suite (set-up included)"
	@echo "make smoke       a seconds-long end-to-end run on the tiny toy world"
	@echo "make bench       every benchmark in benchmarks/, one JSON line each"
	@echo "make tensorboard serve runs/ on port 6006"
	@echo "make gpu-check   every GPU figure in one run (<= 8 min; DRY=1 on the CPU), runs/gpu_check/"
	@echo "make wheelhouse  every wheel for an offline install (DEST=, TARGET_PYTHON=, TARGET_PLATFORM=, WITH_TORCH=1)"
	@echo ""
	@echo "paper runs (GPU; data and weights are local paths you give):"
	@echo "  make pi-nights NIGHTS=/data/nights [GPUS=8]"
	@echo "  make pretrain-pi SHARDS='/data/yfcc15m/{00000..01539}.tar' VAL_SHARDS=... IMAGENET_VAL=... PI_VISUAL=runs/pi_nights_vitb32/version_0/visual.pt"
	@echo "  make pretrain-random SHARDS=... VAL_SHARDS=... IMAGENET_VAL=..."
	@echo "    (+ TID2013= NIGHTS= MIT1003= CUE_CONFLICT= CIFAR100=: also track the texture-bias paper's suite every epoch)"
	@echo "  make texture-bias-suite MODELS='runs/.../checkpoints/*.ckpt' TID2013=/data/tid2013 NIGHTS=/data/nights \\"
	@echo "       MIT1003=/data/mit1003 CUE_CONFLICT=/data/cue-conflict CIFAR100=/data/cifar-100-python"
	@echo "  make perceptclip-koniq IQA_ROOT=/data/pyiqa/datasets WEIGHTS=/models/ViT-L-14-openai.pt"
	@echo "  make perceptclip-lamem LAMEM=/data/lamem WEIGHTS=...   make perceptclip-emoset EMOSET=/data/emoset WEIGHTS=..."

setup: $(STAMP)

# Rebuilt only when the dependency list changes. The exact versions come from the lock (pip's
# constraints file; pyproject.toml holds the supported ranges); torch/torchvision first so that the
# resolver never reaches for another build; pyiqa imports pkg_resources, hence setuptools<81.
# With WHEELHOUSE=DIR (a folder `make wheelhouse` filled): no network, a venv that sees the site's
# packages (the node's CUDA torch, which is kept), everything else from DIR.
LOCK ?= requirements/lock-cpu.txt
WHEELHOUSE ?=
ifeq ($(WHEELHOUSE),)
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools<81" wheel
	$(PY) -m pip install -q -c $(LOCK) torch torchvision
	$(PY) -m pip install -q -c $(LOCK) -e ".[test]"
	touch $(STAMP)
else
$(STAMP): pyproject.toml
	test -d "$(WHEELHOUSE)" || { echo "WHEELHOUSE=$(WHEELHOUSE): no such folder (make wheelhouse writes one)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || ls "$(WHEELHOUSE)"/torch-*.whl >/dev/null 2>&1 || \
	    { echo "no torch visible to $(PYTHON) and none in $(WHEELHOUSE): load the site's (module load ...) or make wheelhouse WITH_TORCH=1"; exit 2; }
	$(PY) -m pip install -q --no-index --find-links "$(WHEELHOUSE)" "setuptools<81" wheel
	$(PY) -m pip install -q --no-index --find-links "$(WHEELHOUSE)" --no-build-isolation -e ".[test]"
	touch $(STAMP)
endif

# Every wheel the project needs, for an offline install elsewhere (tools/wheelhouse.py):
#   make wheelhouse [DEST=wheelhouse] [TARGET_PYTHON=3.11 TARGET_PLATFORM=manylinux_2_28_x86_64] [WITH_TORCH=1]
DEST ?= wheelhouse
wheelhouse: setup
	$(PY) tools/wheelhouse.py --out $(DEST) $(if $(TARGET_PYTHON),--python-version $(TARGET_PYTHON)) \
	    $(if $(TARGET_PLATFORM),--platform $(TARGET_PLATFORM)) $(if $(WITH_TORCH),--with-torch)

# Every GPU figure in one run of at most 8 minutes (benchmarks/gpu_check.py; DRY=1: on the CPU).
gpu-check: setup
	$(PY) benchmarks/gpu_check.py --out runs/gpu_check $(if $(DRY),--dry-run) $(GPU_CHECK_ARGS)

# The lock after a change of pyproject.toml's ranges: what a fresh resolve installs here, pinned.
lock: setup
	{ sed -n '/^#/p' $(LOCK); $(PY) -m pip freeze --exclude-editable | grep -v '^#'; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

# The layer contract first (seconds; names the importing and the imported module), then the suite
# in TEST_WORKERS processes (pytest-xdist; a test file stays in one process, so its module fixtures
# are built once), each with one intra-op thread: on 2 cores 469 s instead of 800 s in one process
# (one run each), whose time went to imports, CLI parsing and probe set-up as much as to arithmetic.
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(PY) -P -m pytest -q -n $(TEST_WORKERS) --dist loadfile
test: setup
	$(VENV)/bin/lint-imports
	$(PYTEST) --durations=15

test-fast: setup
	$(VENV)/bin/lint-imports
	$(PYTEST) -m "not slow"

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir runs --port 6006

clean:
	rm -rf runs/ data/toyworld* .pytest_cache

demo: setup
	$(PL) demo --out runs/demo

SEEDS ?= 3
study: setup
	$(PL) demo --seeds $(SEEDS) --out runs/study

smoke: setup
	$(PL) demo --quick --out runs/smoke

bench: setup
	$(PY) benchmarks/run_all.py

# ---------------------------------------------------------------------------------- paper runs
# Each target stops with a message naming the variable it needs. GPUS and EXTRA pass through
# (e.g. EXTRA="--trainer.num_nodes=4"); WEIGHTS is a local open_clip weights file (offline use).
GPUS  ?= 8
EXTRA ?=
# The run directory is named after the experiment config (the one naming a model), not the
# strategy fragment: `make pi-nights` writes runs/pi_nights_vitb32/version_<n>/.
DDP   := --config experiments/strategies/ddp.yaml --trainer.devices=$(GPUS)
need   = $(if $($(1)),,$(error $(1) is not set: $(2)))

pi-nights: setup
	$(call need,NIGHTS,the NIGHTS folder holding data.csv ref/ distort/)
	$(PL) fit $(DDP) --config experiments/paper/pi_nights_vitb32.yaml --data.init_args.root=$(NIGHTS) $(EXTRA)

# The texture-bias paper's suite (experiments/paper/texture_bias_suite.yaml): its five data folders,
# linked under one data_root. Given to pretrain-pi/-random (any of TID2013, MIT1003, CUE_CONFLICT,
# CIFAR100; NIGHTS alone is stage 1's), the run tracks the
# suite at every epoch besides the ImageNet zero-shot benchmark (CLIP_BENCHMARK: CLIP_benchmark's
# webdataset copies); each folder missing is named.
TEXTURE_DATA  ?= runs/texture_bias_data
CLIP_BENCHMARK ?= /data/clip_benchmark
TEXTURE_GIVEN  = $(strip $(TID2013)$(MIT1003)$(CUE_CONFLICT)$(CIFAR100))
define texture_links
	$(call need,TID2013,the TID2013 folder (pyiqa's layout: tid2013/ images and meta info))
	$(call need,NIGHTS,the NIGHTS folder holding data.csv ref/ distort/)
	$(call need,MIT1003,the MIT1003 folder holding ALLSTIMULI/ ALLFIXATIONMAPS/)
	$(call need,CUE_CONFLICT,the cue-conflict images folder (<shape class>/<shape><i>-<texture><j>.png))
	$(call need,CIFAR100,the cifar-100-python folder (test, meta))
	mkdir -p $(TEXTURE_DATA)
	ln -sfn $(abspath $(TID2013)) $(TEXTURE_DATA)/tid2013
	ln -sfn $(abspath $(NIGHTS)) $(TEXTURE_DATA)/nights
	ln -sfn $(abspath $(MIT1003)) $(TEXTURE_DATA)/mit1003
	ln -sfn $(abspath $(CUE_CONFLICT)) $(TEXTURE_DATA)/cue_conflict
	ln -sfn $(abspath $(CIFAR100)) $(TEXTURE_DATA)/cifar100
endef
TEXTURE_TRACKING = --config experiments/paper/texture_bias_suite.yaml \
  --trainer.callbacks.init_args.data_root=$(TEXTURE_DATA) \
  --trainer.callbacks.init_args.probes+='{"class_path": "perceptlab.callbacks.probes.benchmark.CLIPBenchmarkProbe", "init_args": {"root": "$(CLIP_BENCHMARK)", "tasks": ["wds/imagenet1k"]}}'

texture-bias-suite: setup
	$(call need,MODELS,the checkpoints to measure: files, a glob (quoted) or a run directory with --watch in EXTRA)
	$(texture_links)
	$(PL) evaluate $(MODELS) --config experiments/paper/texture_bias_suite.yaml \
	  --trainer.callbacks.init_args.data_root=$(TEXTURE_DATA) $(EXTRA)

pretrain-pi: setup
	$(call need,SHARDS,a brace pattern of YFCC15M webdataset shards)
	$(call need,VAL_SHARDS,held-out image-text shards for retrieval and validation loss)
	$(call need,IMAGENET_VAL,an ImageNet validation image folder for zero-shot accuracy)
	$(call need,PI_VISUAL,the stage-1 visual.pt or checkpoint)
	$(if $(TEXTURE_GIVEN),$(texture_links))
	$(PL) fit $(DDP) --config experiments/paper/pretrain_yfcc15m_vitb32_pi.yaml $(if $(TEXTURE_GIVEN),$(TEXTURE_TRACKING)) \
	  --data.init_args.pairs.init_args.train='$(SHARDS)' --data.init_args.pairs.init_args.val='$(VAL_SHARDS)' \
	  --data.init_args.zeroshot_data=$(IMAGENET_VAL) --model.init_args.init_visual_from=$(PI_VISUAL) $(EXTRA)

pretrain-random: setup
	$(call need,SHARDS,a brace pattern of YFCC15M webdataset shards)
	$(call need,VAL_SHARDS,held-out image-text shards for retrieval and validation loss)
	$(call need,IMAGENET_VAL,an ImageNet validation image folder for zero-shot accuracy)
	$(if $(TEXTURE_GIVEN),$(texture_links))
	$(PL) fit $(DDP) --config experiments/paper/pretrain_yfcc15m_vitb32_random.yaml $(if $(TEXTURE_GIVEN),$(TEXTURE_TRACKING)) \
	  --data.init_args.pairs.init_args.train='$(SHARDS)' --data.init_args.pairs.init_args.val='$(VAL_SHARDS)' \
	  --data.init_args.zeroshot_data=$(IMAGENET_VAL) $(EXTRA)

perceptclip-koniq: setup
	$(call need,IQA_ROOT,pyiqa's datasets folder (meta_info/ + koniq10k/ LIVEC/ SPAQ/))
	$(call need,WEIGHTS,a local open_clip ViT-L-14 weights file)
	$(PL) fit --config experiments/paper/perceptclip_koniq_vitl14.yaml --model.init_args.pretrained=$(WEIGHTS) \
	  --data.init_args.train_set.root=$(IQA_ROOT) $(EXTRA)

perceptclip-lamem: setup
	$(call need,LAMEM,the LaMem folder holding images/ and splits/)
	$(call need,WEIGHTS,a local open_clip ViT-L-14 weights file)
	$(PL) fit --config experiments/paper/perceptclip_lamem_vitl14.yaml --model.init_args.pretrained=$(WEIGHTS) \
	  --data.init_args.root=$(LAMEM) $(EXTRA)

perceptclip-emoset: setup
	$(call need,EMOSET,the EmoSet folder holding train.json val.json test.json)
	$(call need,WEIGHTS,a local open_clip ViT-L-14 weights file)
	$(PL) fit --config experiments/paper/perceptclip_emoset_vitl14.yaml --model.init_args.pretrained=$(WEIGHTS) \
	  --data.init_args.root=$(EMOSET) $(EXTRA)
