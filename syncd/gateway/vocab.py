"""Word lists the record generator draws from: names, places, phone prefixes, remarks.

The divisions are real county-level codes of Hangzhou, Zhejiang (so ID-number region prefixes
look right); the streets and communities under them are plausible, not authoritative.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DISTRICTS",
    "GIVEN_CHARS",
    "PHONE_PREFIXES",
    "RARE_CHARS",
    "REMARKS",
    "ROADS",
    "SURNAMES",
    "VILLAGES",
]

# (6-digit county code, county name, streets/towns under it)
DISTRICTS: Final[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
    ("330102", "上城区", ("清波街道", "湖滨街道", "小营街道", "南星街道", "紫阳街道", "望江街道")),
    ("330105", "拱墅区", ("米市巷街道", "湖墅街道", "小河街道", "和睦街道", "拱宸桥街道")),
    ("330106", "西湖区", ("北山街道", "西溪街道", "翠苑街道", "文新街道", "古荡街道", "灵隐街道")),
    ("330108", "滨江区", ("西兴街道", "长河街道", "浦沿街道")),
    ("330109", "萧山区", ("城厢街道", "北干街道", "蜀山街道", "新塘街道")),
    ("330110", "余杭区", ("五常街道", "仓前街道", "闲林街道", "余杭街道")),
    ("330122", "桐庐县", ("桐君街道", "旧县街道", "城南街道", "分水镇")),
    ("330127", "淳安县", ("千岛湖镇", "文昌镇", "石林镇", "威坪镇")),
    ("330182", "建德市", ("新安江街道", "洋溪街道", "更楼街道", "梅城镇")),
)

# common surnames, most frequent first (the generator favours the head of the list)
SURNAMES: Final[tuple[str, ...]] = (
    *"王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁",
    *"任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤",
    "欧阳", "司马", "诸葛", "上官", "东方",
)

GIVEN_CHARS: Final[str] = (
    "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂华建国文辉玲红斌宇浩鹏飞欣怡子涵梓轩晨思雨佳琪"
    "一诺俊海燕志云金凤春梅婷雪慧丹玉萍晓东振宁博瑞嘉泽然雅心妍梦瑶家豪林琳永德福荣昌盛天佑"
)

# rare characters outside the Basic Multilingual Plane (4 bytes in UTF-8, surrogate pairs in UTF-16)
RARE_CHARS: Final[str] = "𠮷𡈼𤭢𬌗𫖯𬶐𠇗𪸕𬱖𫚉"

ROADS: Final[tuple[str, ...]] = (
    "解放路", "延安路", "庆春路", "中山北路", "文三路", "文二路", "学院路", "莫干山路", "凤起路",
    "体育场路", "江南大道", "市心中路", "人民路", "建设路", "新华路", "迎宾路", "环城北路", "湖墅南路",
)

VILLAGES: Final[tuple[str, ...]] = (
    "杨家村", "李家村", "上塘村", "下沙村", "东坞村", "西山村", "石门村", "青山村", "花园村", "龙井村",
)

PHONE_PREFIXES: Final[tuple[str, ...]] = (
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "150", "151", "152", "153",
    "155", "156", "157", "158", "159", "166", "173", "175", "176", "177", "178", "180", "181", "182",
    "183", "184", "185", "186", "187", "188", "189", "191", "198", "199",
)

# free-text remarks; the generator also emits the placeholders 无, /, "" and null
REMARKS: Final[tuple[str, ...]] = (
    "低保户", "独居老人", "外出务工", "残疾人", "退役军人",
    "新迁入", "空挂户", "流动人口", "五保户", "计生特扶家庭",
)
