# The targets people and CI run. Each sets up what it needs by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install dev test lint typecheck check bench up down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

dev: install
	exec $(BIN)/chatbeto dev

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff format --check shared services tools tests bench
	$(BIN)/ruff check shared services tools tests bench

typecheck: install
	$(BIN)/mypy shared services tools tests bench

check: lint typecheck test

bench: install
	$(BIN)/python -m bench

up:
	docker compose up -d --build

down:
	docker compose down

clean:
	rm -rf $(VENV) build *.egg-info
