"""How the group read pairs Spark's input file names with the tracker's paths (reading._spark_file_uris): the
pairing is asked of the query (DataFrame.inputFiles), not of Hadoop in the driver's JVM, so it holds over
Spark Connect too; anything that does not pair one to one sends the batch to per-file reads."""

from loader_assets.reading import _spark_file_uris


def test_local_names_pair_through_percent_encoding_and_come_back_as_file_uris():
    paths = ["/lake/landing/a b.parquet", "/lake/landing/100%.parquet", "/lake/landing/[x].parquet"]
    input_files = ["file:///lake/landing/%5Bx%5D.parquet", "file:/lake/landing/a%20b.parquet",
                   "file:///lake/landing/100%25.parquet"]
    assert _spark_file_uris(input_files, paths) == [
        "file:///lake/landing/a%20b.parquet", "file:///lake/landing/100%25.parquet",
        "file:///lake/landing/%5Bx%5D.parquet"]


def test_object_store_names_keep_their_scheme():
    paths = ["s3a://bucket/landing/day=1/f 1.parquet"]
    assert _spark_file_uris(["s3a://bucket/landing/day=1/f%201.parquet"], paths) == [
        "s3a://bucket/landing/day=1/f%201.parquet"]


def test_names_that_do_not_pair_one_to_one_refuse_the_group_read():
    paths = ["/l/a.parquet", "/l/b.parquet"]
    assert _spark_file_uris(["file:///l/a.parquet"], paths) is None  # one missing
    assert _spark_file_uris(["file:///l/a.parquet", "file:///l/c.parquet"], paths) is None  # one unknown
    assert _spark_file_uris(["file:///l/a.parquet", "file:/l/a.parquet"], ["/l/a.parquet"]) is None  # twice
    assert _spark_file_uris(["s3a://b/l/a.parquet"], ["/l/a.parquet"]) is None  # another store
