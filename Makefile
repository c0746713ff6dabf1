# Thin wrapper over CMake. The two commands of the README:
#   make demo   install what is missing, build, train the demo model, print a sample
#   make test   install what is missing, build, run every test (ctest) but those labelled slow
BUILD ?= build
JOBS ?= 2

.PHONY: all deps build test demo bench interop fixtures format clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@mkdir -p $(BUILD)
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DTANDEM_WERROR=ON > $(BUILD)/configure.log 2>&1 \
		|| { cat $(BUILD)/configure.log; exit 1; }
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@scripts/install-deps.sh --clients
	cd $(BUILD) && ctest --output-on-failure --timeout 900 -LE slow

demo: build
	@scripts/demo.sh $(BUILD)

bench: build
	@scripts/install-deps.sh --python
	$(BUILD)/bench_gemm
	$(BUILD)/bench_train --profile
	OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
		OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1 OMP_NUM_THREADS=1 mpirun -np 2 $(BUILD)/bench_comm
	$(BUILD)/bench_tokenizer
	$(BUILD)/bench_decode

interop: build
	@scripts/install-deps.sh --python
	.venv/bin/python tests/reference/interop.py --tandem $(BUILD)/tandem

fixtures:
	@scripts/install-deps.sh --python
	.venv/bin/python tests/reference/make_fixtures.py

format:
	@scripts/format.sh

clean:
	rm -rf $(BUILD)
