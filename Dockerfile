# The project image: every lambda-ml job in docker-compose.yml runs one `lambda-ml` subcommand
# from it, and the MLflow tracking server runs mlflow/entrypoint.sh from it (MLflow is a
# dependency). The Kafka broker is not in here: compose runs the official apache/kafka image.
#
#   docker build -t lambda-ml .
#   docker run --rm lambda-ml --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_DO_NOT_TRACK=True

# The Postgres driver of the MLflow server's backend store (psycopg 3: SQLAlchemy 2.1's default
# for postgresql:// URLs); the jobs themselves do not use it.
ARG PSYCOPG_VERSION=3.3.9

# Java for the batch layer's spark engine: the scheduler is the Spark driver (Spark 4.0 runs on
# Java 17 or 21, whichever the distribution's default is).
RUN apt-get update \
    && apt-get install --yes --no-install-recommends default-jre-headless \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Dependencies first, pinned by constraints.txt, in a layer that a change of code does not redo:
# the runtime's and the spark extra's (pyspark, for BATCH_ENGINE=spark).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['spark']))" > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt "psycopg[binary]==${PSYCOPG_VERSION}"

# The project itself (the packages of pyproject's packages.find), installed, not editable; the
# build folder goes away after.
COPY common ./common
COPY pipelines ./pipelines
COPY models ./models
COPY serving ./serving
COPY streams ./streams
COPY bench ./bench
RUN pip install -c constraints.txt . \
    && rm -rf /build

WORKDIR /app
COPY mlflow/entrypoint.sh ./mlflow/entrypoint.sh

# CLINC150 ships inside the streams package, so `lambda-ml produce`'s defaults work as installed.
RUN python -c "from streams.dataset import CLINC150_DATA, CLINC150_DOMAINS; assert CLINC150_DATA.is_file() and CLINC150_DOMAINS.is_file()"

# A non-root user. The folders that compose mounts named volumes on are created here, owned by
# that user, so that new volumes start out writable by it.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin lambda \
    && mkdir -p /data/master /data/snapshots /data/signals /data/locks /mlflow/artifacts /app/var \
    && chown -R lambda:lambda /data /mlflow /app/var \
    && chmod 0755 /app/mlflow/entrypoint.sh
USER lambda

ENTRYPOINT ["lambda-ml"]
CMD ["--help"]
