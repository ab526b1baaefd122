"""Unit tier: the naming convention from file column names to warehouse columns (pure)."""

import pytest

from dw_pipelines.core.contracts import IDENTIFIER_PATTERN
from dw_pipelines.core.naming import NamingError, dataset_name_for, snake_case


@pytest.mark.parametrize(
    ("source", "column"),
    [
        # Headers of real exports (palmerpenguins, vega_datasets, statsmodels, World Bank).
        ("Culmen Length (mm)", "culmen_length_mm"),
        ("Delta 15 N (o/oo)", "delta_15_n_o_oo"),
        ("studyName", "study_name"),
        ("Sample Number", "sample_number"),
        ("Miles_per_Gallon", "miles_per_gallon"),
        ("Name", "name"),
        ("Country Code", "country_code"),
        ("COUTAX_FEMALEUNEMP", "coutax_femaleunemp"),
        ("1960", "_1960"),
        # camelCase and PascalCase
        ("HTTPStatus", "http_status"),
        ("userID", "user_id"),
        ("mp3Player", "mp3_player"),
        # punctuation, brackets, blanks
        ("  Body Mass (g)  ", "body_mass_g"),
        ("(mm) x", "mm_x"),
        ("a - b / c", "a_b_c"),
        ("trailing___", "trailing"),
        # symbols that carry meaning
        ("Growth %", "growth_percent"),
        ("# of items", "number_of_items"),
        ("R&D", "r_and_d"),
        ("C++", "c_plus_plus"),
        ("@timestamp", "at_timestamp"),
        # a leading underscore of the file's own is kept (Mongo's _id)
        ("_id", "_id"),
        ("__v", "_v"),
        # unicode: transliterated; uncased scripts in lower case
        ("Größe", "grosse"),
        ("naïveCafé", "naive_cafe"),
        ("Temperature (°C)", "temperature_deg_c"),
        ("µg/m³", "ug_m3"),
        ("주문번호", "jumunbeonho"),
        ("日期", "riqi"),
        ("Дата рождения", "data_rozhdeniya"),
        ("\uff46\uff55\uff4c\uff4c \uff57\uff49\uff44\uff54\uff48", "full_width"),
        # SQL words are fine: identifiers are always quoted where it matters
        ("select", "select"),
        ("ORDER", "order"),
    ],
)
def test_snake_case(source: str, column: str) -> None:
    assert snake_case(source) == column
    assert IDENTIFIER_PATTERN.fullmatch(column)


@pytest.mark.parametrize("source", ["", "   ", "???", "()", "-", "\u200b"])
def test_names_without_letters_or_digits_need_an_explicit_column(source: str) -> None:
    with pytest.raises(NamingError, match="give the column a `column:` name"):
        snake_case(source)


def test_long_names_are_cut_to_63_bytes_and_stay_distinct() -> None:
    shared = "measurement of the quarterly average throughput per production line in plant"
    first, second = snake_case(shared + " A"), snake_case(shared + " B")
    assert len(first.encode()) == len(second.encode()) == 63
    assert first != second
    assert first[:54] == second[:54] == snake_case(shared)[:54]
    assert IDENTIFIER_PATTERN.fullmatch(first) and IDENTIFIER_PATTERN.fullmatch(second)
    # The digest depends on the name alone: the same header always gets the same column.
    assert snake_case(shared + " A") == first


def test_a_name_of_exactly_63_characters_is_kept_whole() -> None:
    name = "x" * 63
    assert snake_case(name) == name
    assert len(snake_case("x" * 64)) == 63
    assert snake_case("x" * 64) != "x" * 63


def test_long_unicode_names_are_cut_after_transliteration() -> None:
    name = "가" * 40  # 40 syllables -> "ga" * 40: 80 ASCII characters
    column = snake_case(name)
    assert len(column) == 63 and column.isascii()


def test_reserved_prefix_survives_for_the_contract_to_refuse() -> None:
    # The contract refuses `_dw_` names; the convention must not hide them.
    assert snake_case("_dw_job_id") == "_dw_job_id"
    assert snake_case("dw job id") == "dw_job_id"


@pytest.mark.parametrize(
    ("file_name", "dataset"),
    [
        ("penguins-raw.csv", "penguins_raw"),
        ("Penguins Raw.csv.gz", "penguins_raw"),
        ("s3://bucket/exports/cars.json", "cars"),
        ("2024 sales.parquet", "d_2024_sales"),
        ("???.csv", "dataset"),
    ],
)
def test_dataset_name_for_a_file(file_name: str, dataset: str) -> None:
    assert dataset_name_for(file_name) == dataset
