# Budget Manager services image: `budget migrate`, `budget worker <name>`, ...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that code changes reuse this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
RUN pip install --no-deps . \
    && useradd --system --create-home --uid 10001 budget \
    && mkdir -p /data/spool && chown -R budget /data   # the api's data, every service's spool

USER budget
# Turns the PostgreSQL password secret into a pgpass file, then runs the command.
ENTRYPOINT ["sh", "/app/scripts/container-entrypoint.sh"]
CMD ["budget", "--help"]
