# rpool -- build, test, install.
#
#   make            librpool.a + librpool.so (build/release)
#   make test       install missing deps (ci/deps.sh), build, run every test
#   make tsan|asan  sanitizer builds of the library, tests and stress programs
#   make stress     long stress runs         make bench   benchmarks vs peers
#   make install    honours PREFIX DESTDIR LIBDIR INCLUDEDIR MANDIR
#   make help       this list
#
# Distributions may pass CFLAGS/LDFLAGS; the flags rpool needs are appended.

VERSION_MAJOR := 0
VERSION_MINOR := 1
VERSION_PATCH := 0
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR ?=

ifeq ($(origin CC),default)
CC := gcc
endif
CFLAGS ?= -O2 -g
LDFLAGS ?=

VARIANT ?= release
ifeq ($(VARIANT),tsan)
CC := clang
VFLAGS := -fsanitize=thread -O1 -g -fno-omit-frame-pointer
else ifeq ($(VARIANT),asan)
CC := clang
VFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -O1 -g -fno-omit-frame-pointer
else ifeq ($(VARIANT),fuzz)
CC := clang
VFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -O1 -g
else ifeq ($(VARIANT),clang)
CC := clang
VFLAGS :=
else
VFLAGS :=
endif
B ?= build/$(VARIANT)

DEP_CFLAGS := $(shell pkg-config --cflags ck liburcu-bp 2>/dev/null)
DEP_LIBS := -lurcu-bp -lurcu-common -lck -lpthread
WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
override CFLAGS += -std=c11 -D_GNU_SOURCE $(WARN) $(VFLAGS) -Iinclude -Isrc $(DEP_CFLAGS)
LIB_CFLAGS := -fPIC -fvisibility=hidden -DRP_BUILDING_LIBRARY=1

LIB_SRCS := $(filter-out src/preload.c,$(wildcard src/*.c))
LIB_OBJS := $(LIB_SRCS:src/%.c=$(B)/obj/%.o)
TEST_SRCS := $(wildcard tests/test_*.c)
TESTS := $(TEST_SRCS:tests/%.c=$(B)/tests/%)
STRESS_SRCS := $(wildcard stress/stress_*.c)
STRESSES := $(STRESS_SRCS:stress/%.c=$(B)/stress/%)
TEST_HELPERS := $(wildcard tests/helpers/*.c)

FUZZ_SRCS := $(wildcard fuzz/fuzz_*.c)
FUZZERS := $(FUZZ_SRCS:fuzz/%.c=$(B)/fuzz/%)
FUZZ_SECONDS ?= 60

STATIC := $(B)/librpool.a
# The malloc-compatible preload library: the same sources plus preload.c,
# compiled with initial-exec TLS (malloc must not reach __tls_get_addr).
# Not built in sanitizer variants: the sanitizers own malloc there.
PRELOAD := $(B)/librpool-malloc.so
PRELOAD_OBJS := $(LIB_SRCS:src/%.c=$(B)/pobj/%.o) $(B)/pobj/preload.o
ifneq ($(filter $(VARIANT),tsan asan fuzz),)
PRELOAD :=
endif
SHARED := $(B)/librpool.so.$(VERSION)
SONAME := librpool.so.$(VERSION_MAJOR)

.PHONY: all lib test check tsan asan clang stress bench demo fuzz install \
        uninstall clean help deps tests-build stress-build fuzz-build

all: lib

lib: $(STATIC) $(SHARED) $(B)/rpool.pc $(PRELOAD)

deps:
	@sh ci/deps.sh

$(B)/obj/%.o: src/%.c src/internal.h src/atomic.h include/rpool.h | $(B)/obj
	$(CC) $(CFLAGS) $(LIB_CFLAGS) -c $< -o $@

$(B)/pobj/%.o: src/%.c src/internal.h src/atomic.h include/rpool.h | $(B)/pobj
	$(CC) $(CFLAGS) $(LIB_CFLAGS) -ftls-model=initial-exec -c $< -o $@

$(B)/librpool-malloc.so: $(PRELOAD_OBJS)
	$(CC) $(CFLAGS) -shared -Wl,-soname,librpool-malloc.so -o $@ $^ $(LDFLAGS) $(DEP_LIBS) -ldl

$(B)/obj $(B)/pobj $(B)/tests $(B)/stress $(B)/fuzz:
	@mkdir -p $@

$(STATIC): $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(SHARED): $(LIB_OBJS)
	$(CC) $(CFLAGS) -shared -Wl,-soname,$(SONAME) -o $@ $^ $(LDFLAGS) $(DEP_LIBS)
	ln -sf librpool.so.$(VERSION) $(B)/$(SONAME)
	ln -sf $(SONAME) $(B)/librpool.so

$(B)/rpool.pc: rpool.pc.in Makefile | $(B)/obj
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' $< > $@

TEST_LIBS := $(STATIC) -lcmocka $(DEP_LIBS) -lm

$(B)/tests/%: tests/%.c $(TEST_HELPERS) $(STATIC) tests/testutil.h | $(B)/tests
	$(CC) $(CFLAGS) -Itests -o $@ $< $(TEST_HELPERS) $(LDFLAGS) $(TEST_LIBS)

$(B)/stress/%: stress/%.c stress/stress_common.h $(TEST_HELPERS) $(STATIC) | $(B)/stress
	$(CC) $(CFLAGS) -Itests -o $@ $< $(TEST_HELPERS) $(LDFLAGS) $(TEST_LIBS)

$(B)/fuzz/%: fuzz/%.c $(STATIC) | $(B)/fuzz
	$(CC) $(CFLAGS) -fsanitize=fuzzer -Itests -o $@ $< $(LDFLAGS) $(TEST_LIBS)

fuzz-build: $(STATIC) $(FUZZERS)
tests-build: lib $(TESTS)
stress-build: lib $(STRESSES)

# The README's test command: deps, build, unit tests, then short stress runs
# in the plain, TSan and ASan builds. Ends with "N passed, N failed".
test check: deps
	@$(MAKE) --no-print-directory VARIANT=release tests-build stress-build
	@$(MAKE) --no-print-directory VARIANT=tsan tests-build stress-build
	@$(MAKE) --no-print-directory VARIANT=asan tests-build stress-build
	@$(MAKE) --no-print-directory VARIANT=fuzz fuzz-build
	@FUZZ_SECONDS=$${FUZZ_SECONDS:-20} sh tests/run.sh build/release build/tsan build/asan build/fuzz

tsan:
	@$(MAKE) --no-print-directory VARIANT=tsan tests-build stress-build

asan:
	@$(MAKE) --no-print-directory VARIANT=asan tests-build stress-build

clang:
	@$(MAKE) --no-print-directory VARIANT=clang lib tests-build

stress: deps
	@$(MAKE) --no-print-directory VARIANT=release stress-build
	@$(MAKE) --no-print-directory VARIANT=tsan stress-build
	@RP_STRESS_LONG=1 sh tests/run.sh --stress-only build/release build/tsan

# The README's "main job": a loopback HTTP server under load with live memory
# stats, then the same run on plain malloc (examples/README.md).
demo: deps
	@$(MAKE) --no-print-directory -C examples demo

# Bounded fuzzing campaign of every fuzz/fuzz_*.c target (FUZZ_SECONDS each).
fuzz: deps
	@$(MAKE) --no-print-directory VARIANT=fuzz fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) sh tests/run.sh --fuzz-only build/fuzz

bench: deps
	@$(MAKE) --no-print-directory -C bench

install: lib
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/librpool.a
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/librpool.so.$(VERSION)
	ln -sf librpool.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/librpool.so
	install -m 755 $(B)/librpool-malloc.so $(DESTDIR)$(LIBDIR)/librpool-malloc.so
	install -m 644 include/rpool.h $(DESTDIR)$(INCLUDEDIR)/rpool.h
	install -m 644 $(B)/rpool.pc $(DESTDIR)$(PKGCONFIGDIR)/rpool.pc
	@if [ -f docs/rpool.3 ]; then install -d $(DESTDIR)$(MANDIR)/man3 && \
	    install -m 644 docs/rpool.3 $(DESTDIR)$(MANDIR)/man3/rpool.3; fi

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/librpool.a $(DESTDIR)$(LIBDIR)/librpool.so \
	      $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/librpool.so.$(VERSION) \
	      $(DESTDIR)$(LIBDIR)/librpool-malloc.so \
	      $(DESTDIR)$(INCLUDEDIR)/rpool.h $(DESTDIR)$(PKGCONFIGDIR)/rpool.pc \
	      $(DESTDIR)$(MANDIR)/man3/rpool.3

clean:
	rm -rf build

help:
	@sed -n '2,10p' Makefile | sed 's/^# \{0,1\}//'
